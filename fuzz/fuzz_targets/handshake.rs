//! The accepting side of the handshake against a client that sends the fuzz
//! bytes. Must never panic or hang: it runs on a current-thread runtime with
//! a paused clock under the same timeout the node uses (2 s), so a server
//! left waiting for input ends at once.
//!
//! Input layout: byte 0 holds flags (bit 0: the server has a secret; bit 1:
//! the client keeps its end open after writing instead of closing it;
//! bit 2: the client writes in one piece instead of byte-sized pieces
//! interleaved with reads); the rest is what the client sends.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ringleader::transport::codec::framed;
use ringleader::transport::handshake::{self, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, sent)) = data.split_first() else {
        return;
    };
    let secret = (flags & 1 != 0)
        .then(|| Secret::new(b"fuzz-secret-of-enough-bytes".to_vec()).expect("long enough"));
    let keep_open = flags & 2 != 0;
    let one_piece = flags & 4 != 0;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (server_io, mut client_io) = tokio::io::duplex(64 * 1024);
        let server = async {
            let mut conn = framed(server_io, 64 * 1024);
            let r = tokio::time::timeout(
                Duration::from_secs(2),
                handshake::server(&mut conn, "ringleader", 1, secret.as_ref()),
            )
            .await;
            drop(conn);
            r
        };
        let client = async {
            if one_piece {
                let _ = client_io.write_all(sent).await;
            } else {
                for piece in sent.chunks(7) {
                    if client_io.write_all(piece).await.is_err() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            if !keep_open {
                let _ = client_io.shutdown().await;
            }
            // Read what the server says until it closes.
            let mut sink = Vec::new();
            let _ = client_io.read_to_end(&mut sink).await;
        };
        let (result, ()) = tokio::join!(server, client);
        // The server may only admit a client that completed the handshake:
        // with a secret that means a valid HMAC proof, which random bytes
        // cannot produce.
        if let Ok(Ok(_)) = result {
            assert!(secret.is_none(), "admitted without the secret");
        }
    });
});

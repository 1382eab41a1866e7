//! Arbitrary bytes through the frame decoder, in arbitrary chunks, and every
//! frame it yields through the message decoders. Must never panic.
//!
//! Input layout: byte 0 picks the maximum frame size, byte 1 the chunk size
//! (how many bytes arrive per read); the rest is the byte stream.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringleader::protocol::{Request, Response};
use ringleader::state::{ClusterState, Command};
use ringleader::transport::codec::{self, framed};
use ringleader::transport::handshake::HandshakeMsg;
use tokio_util::codec::Decoder;

const MAX_FRAMES: [usize; 4] = [64, 1024, 64 * 1024, codec::DEFAULT_MAX_FRAME];

/// Decodes one payload as every message type a peer may send, and checks
/// that whatever decodes survives an encode/decode round trip unchanged.
fn messages(payload: &[u8]) {
    if let Ok(m) = codec::decode::<Request>(payload) {
        let again: Request = codec::decode(&codec::encode(&m).expect("re-encode Request"))
            .expect("decode re-encoded Request");
        assert_eq!(format!("{m:?}"), format!("{again:?}"));
    }
    if let Ok(m) = codec::decode::<Response>(payload) {
        let again: Response = codec::decode(&codec::encode(&m).expect("re-encode Response"))
            .expect("decode re-encoded Response");
        assert_eq!(format!("{m:?}"), format!("{again:?}"));
    }
    if let Ok(m) = codec::decode::<HandshakeMsg>(payload) {
        let again: HandshakeMsg = codec::decode(&codec::encode(&m).expect("re-encode"))
            .expect("decode re-encoded HandshakeMsg");
        assert_eq!(format!("{m:?}"), format!("{again:?}"));
    }
    let _ = codec::decode::<Command>(payload);
    let _ = codec::decode::<ClusterState>(payload);
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max_frame = MAX_FRAMES[(data[0] & 3) as usize];
    let chunk = usize::from(data[1]).max(1);
    let stream = &data[2..];

    // The real codec, taken out of a `Framed` (its only constructor).
    let (io, _other) = tokio::io::duplex(1);
    let mut framed = framed(io, max_frame);
    let decoder = framed.codec_mut();

    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max_frame, "frame over the maximum");
                    messages(&frame);
                }
                Ok(None) => break,
                // The connection would be closed here.
                Err(_) => return,
            }
        }
    }
    // The peer closed the connection.
    while let Ok(Some(frame)) = decoder.decode_eof(&mut buf) {
        messages(&frame);
    }
});

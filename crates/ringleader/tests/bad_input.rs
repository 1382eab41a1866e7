//! A live cluster keeps serving whatever arrives on its peer port.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use ringleader::transport::codec::{encode, framed, raw_frame, recv_required, send};

use ringleader::transport::handshake::{self, HandshakeMsg, Secret};
use ringleader::{Error, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A secret from a short word, padded to the minimum length.
fn key(word: &str) -> Secret {
    Secret::new(format!("{word:-<16}")).expect("16 bytes")
}

async fn secret_cluster(n: usize, secret: &str) -> Vec<Node> {
    let addrs = free_addrs(n);
    let starts = addrs.iter().enumerate().map(|(i, a)| {
        builder(&format!("s{i}"), a, &addrs)
            .cluster("guarded")
            .secret(key(secret))
            .start()
    });
    futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|r| r.expect("start"))
        .collect()
}

/// Reads until the peer closes the connection (or a deadline passes).
async fn expect_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the node did not close a bad connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_truncation_oversize_and_wrong_secrets_do_not_hurt_the_cluster() {
    init_tracing();
    let nodes = secret_cluster(3, "s3cret").await;
    let before = wait_agreement(&nodes, 3, "3 guarded nodes agree").await;
    let target = nodes.iter().find(|n| n.id() != before.leader).unwrap();
    let addr = target.info().addr.clone();
    let stats = target.wire_stats();

    // 1. Random garbage instead of a handshake.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&[0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x99])
        .await
        .unwrap();
    expect_closed(&mut s).await;

    // 2. Half a frame, then the connection drops.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&[0, 0, 0, 100, 1, 2, 3]).await.unwrap();
    drop(s);

    // 3. A length prefix far over the limit.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    expect_closed(&mut s).await;

    // 4. A handshake with the wrong secret is refused, and the refusal says why.
    let conn = TcpStream::connect(&addr).await.unwrap();
    let mut f = framed(conn, 1 << 20);
    let wrong = key("guess");
    let err = handshake::client(&mut f, "guarded", 77, Some(&wrong))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("secret"), "{err}");

    // 5. No secret at all.
    let conn = TcpStream::connect(&addr).await.unwrap();
    let mut f = framed(conn, 1 << 20);
    assert!(
        handshake::client(&mut f, "guarded", 77, None)
            .await
            .is_err()
    );

    // 6. The wrong cluster name.
    let conn = TcpStream::connect(&addr).await.unwrap();
    let mut f = framed(conn, 1 << 20);
    let right = key("s3cret");
    let err = handshake::client(&mut f, "other", 77, Some(&right))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cluster"), "{err}");

    // 7. A valid handshake followed by a frame that is not a request (no
    // request variant 127 exists).
    let conn = TcpStream::connect(&addr).await.unwrap();
    let mut f = framed(conn, 1 << 20);
    handshake::client(&mut f, "guarded", 77, Some(&right))
        .await
        .unwrap();
    let mut inner = f.into_inner();
    inner.write_all(&raw_frame(&[0x7f, 1, 2])).await.unwrap();
    expect_closed(&mut inner).await;

    // 8. An unexpected message where the handshake should start.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&raw_frame(&encode(&HandshakeMsg::Welcome).unwrap()))
        .await
        .unwrap();
    expect_closed(&mut s).await;

    // 9. A burst of connections that say nothing and vanish.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    drop(idle);

    // The node counted what it refused and the cluster is unharmed.
    wait_until("rejections counted", || {
        stats.handshakes_refused.load(Ordering::Relaxed) >= 3
            && stats.frames_rejected.load(Ordering::Relaxed) >= 3
    })
    .await;
    let after = wait_agreement(&nodes, 3, "the cluster still agrees").await;
    assert_eq!(after.members, before.members);
    assert_eq!(after.leader, before.leader);

    // And a correct client still gets answers on the same port.
    let conn = TcpStream::connect(&addr).await.unwrap();
    let mut f = framed(conn, 1 << 20);
    handshake::client(&mut f, "guarded", 77, Some(&right))
        .await
        .unwrap();
    send(&mut f, &ringleader::protocol::Request::Probe)
        .await
        .unwrap();
    let answer: ringleader::protocol::Response = recv_required(&mut f).await.unwrap();
    assert!(
        matches!(answer, ringleader::protocol::Response::Probe(ref p) if p.clustered),
        "{answer:?}"
    );
    shutdown_all(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_the_wrong_secret_is_never_admitted() {
    init_tracing();
    let nodes = secret_cluster(3, "right").await;
    let before = wait_agreement(&nodes, 3, "guarded cluster").await;
    let seeds: Vec<String> = nodes.iter().map(|n| n.info().addr.clone()).collect();
    let intruder = builder("intruder", &free_addrs(1)[0], &seeds)
        .cluster("guarded")
        .secret(key("wrong"))
        .start()
        .await
        .unwrap();
    // It never gets in, and it says why.
    match intruder.wait_ready(DEADLINE).await {
        Err(Error::Refused(reason)) => assert!(reason.contains("secret"), "{reason}"),
        other => panic!("expected a refusal naming the secret, got {other:?}"),
    }
    let after = wait_agreement(&nodes, 3, "the cluster is unchanged").await;
    assert_eq!(after.members, before.members);
    intruder.shutdown().await;
    shutdown_all(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_of_another_cluster_is_refused_clearly() {
    init_tracing();
    let nodes = start_cluster(1).await;
    wait_agreement(&nodes, 1, "one node").await;
    let seeds = vec![nodes[0].info().addr.clone()];
    let stranger = builder("stranger", &free_addrs(1)[0], &seeds)
        .cluster("elsewhere")
        .start()
        .await
        .unwrap();
    match stranger.wait_ready(DEADLINE).await {
        Err(Error::Refused(reason)) => assert!(reason.contains("cluster name"), "{reason}"),
        other => panic!("expected a refusal naming the cluster, got {other:?}"),
    }
    stranger.shutdown().await;
    shutdown_all(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_another_partition_count_is_refused_clearly() {
    init_tracing();
    let nodes = start_cluster(1).await;
    wait_agreement(&nodes, 1, "one node").await;
    let seeds = vec![nodes[0].info().addr.clone()];
    let odd = builder("odd", &free_addrs(1)[0], &seeds)
        .partitions(99)
        .start()
        .await
        .unwrap();
    match odd.wait_ready(DEADLINE).await {
        Err(Error::Refused(reason)) => assert!(reason.contains("99"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    odd.shutdown().await;
    shutdown_all(&nodes).await;
}

/// A connection authenticated as node `me` (the secret is right; the id is
/// whatever the caller claims).
async fn authenticated(
    addr: &str,
    secret: &str,
    me: u64,
) -> ringleader::transport::codec::FramedStream<TcpStream> {
    let conn = TcpStream::connect(addr).await.unwrap();
    let mut f = framed(conn, 1 << 20);
    handshake::client(&mut f, "guarded", me, Some(&key(secret)))
        .await
        .unwrap();
    f.codec_mut().set_max_frame(16 << 20);
    f
}

async fn ask(
    f: &mut ringleader::transport::codec::FramedStream<TcpStream>,
    request: ringleader::protocol::Request,
) -> ringleader::protocol::Response {
    send(f, &request).await.unwrap();
    recv_required(f).await.unwrap()
}

/// Issue 18, items 1 and 2: a peer holding the secret still cannot speak for
/// another node (leave it, join as it, release its partitions), a join may
/// not take a live member's address, and a join whose name fills a frame is
/// refused before it reaches the log, which keeps committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_speaks_only_for_itself_and_within_bounds() {
    use ringleader::protocol::{JoinOutcome, Request, Response};
    use ringleader::types::NodeInfo;
    init_tracing();
    let nodes = secret_cluster(3, "s3cret").await;
    let before = wait_agreement(&nodes, 3, "3 guarded nodes agree").await;
    let leader = nodes.iter().find(|n| n.id() == before.leader).unwrap();
    let victim = nodes.iter().find(|n| n.id() != before.leader).unwrap();
    let addr = leader.info().addr.clone();
    let me = 4242;
    let mut f = authenticated(&addr, "s3cret", me).await;

    // Speaking for the victim: refused, whatever the request.
    let forged = [
        Request::Leave { id: victim.id() },
        Request::Release {
            id: victim.id(),
            partitions: vec![(0, 1)],
        },
        Request::Heartbeat {
            id: victim.id(),
            known_created: 0,
            known_index: 0,
            released: Vec::new(),
        },
        Request::Join {
            id: victim.id(),
            info: victim.info().clone(),
            num_partitions: 16,
            incarnation: 0,
        },
    ];
    for request in forged {
        let answer = ask(&mut f, request.clone()).await;
        assert!(
            matches!(answer, Response::Error(_)),
            "{request:?}: {answer:?}"
        );
    }
    // Joining under our own id but at the victim's address: refused, and
    // the victim stays.
    let answer = ask(
        &mut f,
        Request::Join {
            id: me,
            info: NodeInfo {
                name: "thief".into(),
                addr: victim.info().addr.clone(),
                http_addr: None,
            },
            num_partitions: 16,
            incarnation: 0,
        },
    )
    .await;
    // Not now (a restart whose probe failed tries again), and never while
    // the member answers there.
    assert!(
        matches!(answer, Response::Join(JoinOutcome::NotNow(ref why)) if why.contains("address")),
        "{answer:?}"
    );
    // The leader's own address: refused for good.
    let answer = ask(
        &mut f,
        Request::Join {
            id: me,
            info: NodeInfo {
                name: "thief".into(),
                addr: leader.info().addr.clone(),
                http_addr: None,
            },
            num_partitions: 16,
            incarnation: 0,
        },
    )
    .await;
    assert!(
        matches!(answer, Response::Join(JoinOutcome::Refused(ref why)) if why.contains("leader")),
        "{answer:?}"
    );
    // A name that fills most of a frame never reaches the log.
    let answer = ask(
        &mut f,
        Request::Join {
            id: me,
            info: NodeInfo {
                name: "n".repeat(7 << 20),
                addr: "127.0.0.1:9".into(),
                http_addr: None,
            },
            num_partitions: 16,
            incarnation: 0,
        },
    )
    .await;
    assert!(
        matches!(answer, Response::Join(JoinOutcome::Refused(ref why)) if why.contains("name")),
        "{answer:?}"
    );
    assert!(leader.wire_stats().requests_refused.load(Ordering::Relaxed) >= 4);
    let after = wait_agreement(&nodes, 3, "the cluster is unchanged").await;
    assert_eq!(after.members, before.members);
    // The log still commits: a new node joins and gets its share.
    let seeds: Vec<String> = nodes.iter().map(|n| n.info().addr.clone()).collect();
    let late = builder("late", &free_addrs(1)[0], &seeds)
        .cluster("guarded")
        .secret(key("s3cret"))
        .start()
        .await
        .unwrap();
    let mut all = nodes.clone();
    all.push(late);
    wait_agreement(&all, 3, "the late node is admitted").await;
    shutdown_all(&all).await;
}

/// Issue 18, item 5: before the handshake a connection may send only small
/// frames, and a large declared length is refused before anything is
/// allocated for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_frames_before_the_handshake_close_the_connection() {
    init_tracing();
    let nodes = secret_cluster(1, "s3cret").await;
    wait_agreement(&nodes, 1, "one node").await;
    let addr = nodes[0].info().addr.clone();
    for declared in [5u32 << 10, 1 << 20, 8 << 20] {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(&declared.to_be_bytes()).await.unwrap();
        s.write_all(&[0u8; 100]).await.unwrap();
        expect_closed(&mut s).await;
    }
    assert!(
        nodes[0]
            .wire_stats()
            .frames_rejected
            .load(Ordering::Relaxed)
            >= 3
    );
    shutdown_all(&nodes).await;
}

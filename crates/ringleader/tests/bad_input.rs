//! A live cluster keeps serving whatever arrives on its peer port.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use ringleader::transport::codec::{encode, framed, raw_frame, recv_required, send};

use ringleader::transport::handshake::{self, HandshakeMsg, Secret};
use ringleader::{Error, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn secret_cluster(n: usize, secret: &str) -> Vec<Node> {
    let addrs = free_addrs(n);
    let starts = addrs.iter().enumerate().map(|(i, a)| {
        builder(&format!("s{i}"), a, &addrs)
            .cluster("guarded")
            .secret(secret.as_bytes().to_vec())
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
    let wrong = Secret::new(b"guess".to_vec());
    let err = handshake::client(&mut f, "guarded", Some(&wrong))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("secret"), "{err}");

    // 5. No secret at all.
    let conn = TcpStream::connect(&addr).await.unwrap();
    let mut f = framed(conn, 1 << 20);
    assert!(handshake::client(&mut f, "guarded", None).await.is_err());

    // 6. The wrong cluster name.
    let conn = TcpStream::connect(&addr).await.unwrap();
    let mut f = framed(conn, 1 << 20);
    let right = Secret::new(b"s3cret".to_vec());
    let err = handshake::client(&mut f, "other", Some(&right))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cluster"), "{err}");

    // 7. A valid handshake followed by a frame that is not a request (no
    // request variant 127 exists).
    let conn = TcpStream::connect(&addr).await.unwrap();
    let mut f = framed(conn, 1 << 20);
    handshake::client(&mut f, "guarded", Some(&right))
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
    handshake::client(&mut f, "guarded", Some(&right))
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
        .secret(b"wrong".to_vec())
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

//! The simulation hooks of `NodeBuilder`: a chosen node id and an injected
//! wall clock (the creation stamp of a new cluster comes from it).

use std::sync::Arc;
use std::time::Duration;

use ringleader::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chosen_id_and_wall_clock_are_used() {
    // 1_000_000_000.25 s after the epoch: the stamp is the next whole second.
    let clock: ringleader::runtime::WallClock =
        Arc::new(|| Duration::from_millis(1_000_000_000_250));
    let node = Node::builder()
        .listen("127.0.0.1:0")
        .partitions(8)
        .id(42)
        .wall_clock(clock)
        .start()
        .await
        .expect("starts");
    assert_eq!(node.id(), 42);
    node.wait_ready(Duration::from_secs(10))
        .await
        .expect("ready");
    let (leader, epoch) = node.leader().expect("a leader");
    assert_eq!(leader, 42);
    let (created_secs, _) = ringleader::token::split_token(epoch);
    assert_eq!(created_secs, 1_000_000_001);
    node.shutdown().await;
}

#[tokio::test]
async fn id_zero_is_refused() {
    let err = Node::builder()
        .listen("127.0.0.1:0")
        .id(0)
        .start()
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("id"), "{err}");
}

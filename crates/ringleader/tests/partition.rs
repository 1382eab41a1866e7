//! Network partitions inside one process (links cut at the transport).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ringleader::Node;
use tokio::time::Instant;

/// Samples every node every few ms until `until` holds, failing if two
/// nodes ever claim to lead at once.
async fn watch_single_leader<F: FnMut() -> bool>(nodes: &[Node], what: &str, mut until: F) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let leaders: Vec<u64> = nodes
            .iter()
            .filter(|n| n.is_leader())
            .map(Node::id)
            .collect();
        assert!(
            leaders.len() <= 1,
            "two nodes act as leader at once: {leaders:?}"
        );
        if until() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_leader_stops_leading_before_a_new_one_is_elected() {
    init_tracing();
    let addrs = free_addrs(3);
    let ids: Vec<u64> = (0..3).map(|_| rand::random::<u64>() | 1).collect();
    let transports: Vec<Arc<FaultyTransport>> =
        ids.iter().map(|id| FaultyTransport::new(*id)).collect();
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let node = builder(&format!("p{i}"), addr, &addrs)
            .id(ids[i])
            .transport(transports[i].clone())
            .start()
            .await
            .unwrap();
        nodes.push(node);
    }
    let before = wait_agreement(&nodes, 3, "3 voters agree").await;
    let l = nodes.iter().position(|n| n.id() == before.leader).unwrap();

    // Cut the leader off in both directions.
    for (i, t) in transports.iter().enumerate() {
        if i == l {
            for (j, a) in addrs.iter().enumerate() {
                if j != l {
                    t.block(a);
                }
            }
        } else {
            t.block(&addrs[l]);
        }
    }
    let majority: Vec<Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != l)
        .map(|(_, n)| n.clone())
        .collect();
    // The majority elects a new leader; never two leaders at one instant.
    watch_single_leader(&nodes, "the majority elects a new leader", || {
        majority.iter().any(|n| n.is_leader())
    })
    .await;
    assert!(!nodes[l].is_leader());
    watch_single_leader(&nodes, "the majority expels the old leader", || {
        agreement(&majority, 1).is_some()
    })
    .await;
    let during = agreement(&majority, 1).unwrap();
    assert!(during.epoch > before.epoch);

    // Heal: the old leader learns it was expelled, rejoins, and all agree.
    for t in &transports {
        t.heal();
    }
    watch_single_leader(&nodes, "all three agree again", || {
        agreement(&nodes, 3).is_some()
    })
    .await;
    let after = agreement(&nodes, 3).unwrap();
    let ids: BTreeSet<u64> = nodes.iter().map(Node::id).collect();
    assert_eq!(after.members, ids);
    assert!(after.epoch >= during.epoch);
    shutdown_all(&nodes).await;
}

//! Handoffs with a cooperative application never wait for revocation
//! deadlines: with the deadline set to ten minutes, the cluster must still
//! settle (within the usual test deadline) through releases alone.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use ringleader::{Node, Timings};

fn settled(nodes: &[Node], p: u32) -> bool {
    let mut seen = BTreeSet::new();
    for n in nodes {
        for g in n.owned() {
            if !seen.insert(g.partition) {
                return false;
            }
        }
    }
    let (lo, hi) = nodes
        .iter()
        .map(|n| n.owned().len())
        .fold((usize::MAX, 0), |(lo, hi), c| (lo.min(c), hi.max(c)));
    seen.len() == p as usize && hi - lo <= 1
}

fn patient() -> Timings {
    Timings {
        revoke_timeout: Duration::from_secs(600),
        ..Timings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_start_settles_through_releases() {
    init_tracing();
    let addrs = free_addrs(4);
    let starts = addrs.iter().enumerate().map(|(i, a)| {
        builder(&format!("s{i}"), a, &addrs)
            .timings(patient())
            .start()
    });
    let nodes: Vec<Node> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let apps: Vec<_> = nodes.iter().map(auto_release).collect();
    wait_until("4 nodes settle through releases", || settled(&nodes, 16)).await;
    apps.iter().for_each(|a| a.abort());
    shutdown_all(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_joins_settle_through_releases() {
    init_tracing();
    let addrs = free_addrs(4);
    let first = builder("j0", &addrs[0], &addrs[..1])
        .timings(patient())
        .start()
        .await
        .unwrap();
    let mut apps = vec![auto_release(&first)];
    wait_until("the first node owns everything", || {
        first.owned().len() == 16
    })
    .await;
    let mut nodes = vec![first];
    for (i, a) in addrs[1..].iter().enumerate() {
        let n = builder(&format!("j{}", i + 1), a, &addrs[..1])
            .timings(patient())
            .start()
            .await
            .unwrap();
        apps.push(auto_release(&n));
        nodes.push(n);
    }
    wait_until("4 nodes settle through releases", || settled(&nodes, 16)).await;
    apps.iter().for_each(|a| a.abort());
    shutdown_all(&nodes).await;
}

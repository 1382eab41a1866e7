//! Multi-node behaviour on loopback, in one process.

mod common;

use std::time::Duration;

use common::*;
use ringleader::{Event, EventStream, LeaveReason};

/// Waits (bounded) for the MemberLeft event of `who` and returns its reason.
async fn member_left(events: &mut EventStream, who: u64) -> LeaveReason {
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(Event::MemberLeft { id, reason, .. }) = events.next().await {
                if id == who {
                    return reason;
                }
            }
        }
    })
    .await
    .expect("MemberLeft event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_agree_and_survive_leader_and_member_loss() {
    init_tracing();
    let mut nodes = start_cluster(5).await;
    let first = wait_agreement(&nodes, 5, "5 nodes agree, all voters").await;

    // Kill the leader (no goodbye): a new leader with a higher epoch, and
    // every survivor attached to it.
    let leader_pos = nodes.iter().position(|n| n.id() == first.leader).unwrap();
    let old_leader = nodes.remove(leader_pos);
    old_leader.shutdown().await;
    let second = wait_agreement(&nodes, 3, "4 nodes agree after the leader died").await;
    assert_ne!(second.leader, first.leader);
    assert!(second.epoch > first.epoch, "{second:?} vs {first:?}");

    // Kill a plain member: it is removed and everyone agrees.
    let member_pos = nodes
        .iter()
        .position(|n| !second.voters.contains(&n.id()))
        .expect("a non-voter");
    let dead = nodes.remove(member_pos);
    let mut events = nodes[0].events();
    let dead_id = dead.id();
    dead.shutdown().await;
    let third = wait_agreement(&nodes, 3, "3 nodes agree after a member died").await;
    assert_eq!(third.leader, second.leader);
    assert_eq!(
        member_left(&mut events, dead_id).await,
        LeaveReason::Expired
    );

    // Add a node: it is admitted.
    let seeds: Vec<String> = nodes.iter().map(|n| n.info().addr.clone()).collect();
    let addr = free_addrs(1).remove(0);
    let newcomer = builder("late", &addr, &seeds).start().await.unwrap();
    newcomer.wait_ready(DEADLINE).await.unwrap();
    nodes.push(newcomer);
    let fourth = wait_agreement(&nodes, 3, "the newcomer is admitted").await;
    assert_eq!(fourth.members.len(), 4);
    shutdown_all(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_starts_always_form_one_cluster() {
    init_tracing();
    for round in 0..20 {
        let nodes = start_cluster(3).await;
        let agreed = wait_agreement(&nodes, 3, &format!("round {round}: one cluster of 3")).await;
        assert_eq!(agreed.members.len(), 3);
        shutdown_all(&nodes).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_without_seeds_starts_at_once() {
    init_tracing();
    let node = ringleader::Node::builder().start().await.unwrap();
    node.wait_ready(DEADLINE).await.unwrap();
    let agreed = wait_agreement(std::slice::from_ref(&node), 1, "alone").await;
    assert_eq!(agreed.leader, node.id());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_leave_removes_through_the_log() {
    init_tracing();
    let mut nodes = start_cluster(4).await;
    let _apps: Vec<_> = nodes.iter().map(auto_release).collect();
    let agreed = wait_agreement(&nodes, 3, "4 nodes agree").await;
    let mut events = nodes[0].events();
    // A member leaves: removed with reason Left.
    let pos = nodes
        .iter()
        .position(|n| n.id() != agreed.leader && n.id() != nodes[0].id())
        .unwrap();
    let leaving = nodes.remove(pos);
    let leaving_id = leaving.id();
    leaving.leave(Duration::from_secs(10)).await.unwrap();
    let reason = member_left(&mut events, leaving_id).await;
    assert_eq!(reason, LeaveReason::Left);
    let after = wait_agreement(&nodes, 3, "3 nodes after a leave").await;
    // The leader leaves: the others elect a new one.
    let pos = nodes.iter().position(|n| n.id() == after.leader).unwrap();
    let leader = nodes.remove(pos);
    leader.leave(Duration::from_secs(10)).await.unwrap();
    let last = wait_agreement(&nodes, 1, "2 nodes after the leader left").await;
    assert_ne!(last.leader, after.leader);
    assert!(last.epoch > after.epoch);
    shutdown_all(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_node_joins_through_any_seed_and_events_tell_the_story() {
    init_tracing();
    let mut nodes = start_cluster(3).await;
    let first = wait_agreement(&nodes, 3, "3 nodes").await;
    let follower = nodes.iter().find(|n| n.id() != first.leader).unwrap();
    // The newcomer knows only a follower: it is redirected to the leader.
    let seeds = vec![follower.info().addr.clone()];
    let mut watcher = nodes[0].events();
    let late = builder("late", &free_addrs(1)[0], &seeds)
        .start()
        .await
        .unwrap();
    let late_id = late.id();
    let mut late_events = late.events();
    late.wait_ready(DEADLINE).await.unwrap();
    nodes.push(late);
    wait_agreement(&nodes, 3, "4 nodes").await;
    let joined = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(Event::MemberJoined { id, info, .. }) = watcher.next().await {
                if id == late_id {
                    return info.name;
                }
            }
        }
    })
    .await
    .expect("MemberJoined");
    assert_eq!(joined, "late");

    // Kill the leader: the newcomer sees LeaderChanged with a higher epoch,
    // and the new leader (alone) sees BecameLeader with that same epoch.
    let pos = nodes.iter().position(|n| n.id() == first.leader).unwrap();
    let mut streams: Vec<_> = nodes.iter().map(|n| (n.id(), n.events())).collect();
    nodes.remove(pos).shutdown().await;
    streams.retain(|(id, _)| *id != first.leader);
    let second = wait_agreement(&nodes, 3, "3 nodes after the leader died").await;
    let changed = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(Event::LeaderChanged { leader, epoch }) = late_events.next().await {
                if leader != first.leader {
                    return (leader, epoch);
                }
            }
        }
    })
    .await
    .expect("LeaderChanged");
    assert_eq!(changed, (second.leader, second.epoch));
    assert!(second.epoch > first.epoch);
    for (id, stream) in &mut streams {
        // Drain what each node has seen so far, without waiting for more.
        let mut became = Vec::new();
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(50), stream.next()).await
        {
            if let Event::BecameLeader { epoch } = event {
                became.push(epoch);
            }
        }
        if *id == second.leader {
            assert_eq!(
                became,
                vec![second.epoch],
                "the new leader announces itself once"
            );
        } else {
            assert!(became.is_empty(), "only the leader sees BecameLeader");
        }
    }
    shutdown_all(&nodes).await;
}

/// Voters keep their sessions and leases on the leader's quorum rounds
/// (`ringleader::beat`) instead of heartbeating; members still heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn voters_ride_on_the_leaders_beats_and_members_heartbeat() {
    use std::sync::atomic::Ordering::Relaxed;
    init_tracing();
    let nodes = start_cluster(7).await;
    let agreed = wait_agreement(&nodes, 5, "7 nodes agree").await;
    let followers: Vec<&ringleader::Node> = nodes
        .iter()
        .filter(|n| agreed.voters.contains(&n.id()) && n.id() != agreed.leader)
        .collect();
    let members: Vec<&ringleader::Node> = nodes
        .iter()
        .filter(|n| !agreed.voters.contains(&n.id()))
        .collect();
    assert_eq!((followers.len(), members.len()), (4, 2));
    let beats = |n: &ringleader::Node| n.stats().renewals_by_beat.load(Relaxed);
    let heartbeats = |n: &ringleader::Node| n.stats().renewals_by_heartbeat.load(Relaxed);
    wait_until("beats renew both follower voters", || {
        followers.iter().all(|n| beats(n) >= 10)
    })
    .await;
    let before: Vec<(u64, u64)> = nodes.iter().map(|n| (beats(n), heartbeats(n))).collect();
    // About two seconds of beats (one every 50 ms).
    wait_until("40 more beat renewals on each follower voter", || {
        followers.iter().all(|n| {
            beats(n) >= before[nodes.iter().position(|m| m.id() == n.id()).unwrap()].0 + 40
        })
    })
    .await;
    wait_until("members renewed by 5 more heartbeats", || {
        members.iter().all(|n| {
            let i = nodes.iter().position(|m| m.id() == n.id()).unwrap();
            heartbeats(n) >= before[i].1 + 5
        })
    })
    .await;
    for (i, n) in nodes.iter().enumerate() {
        let (b, h) = (beats(n) - before[i].0, heartbeats(n) - before[i].1);
        if followers.iter().any(|f| f.id() == n.id()) {
            // A voter heartbeats only when poked, with releases to report or
            // when beats stopped renewing it: rarely while idle.
            assert!(
                h * 4 < b,
                "follower voter {}: {h} heartbeats vs {b} beats",
                n.info().name
            );
        } else if members.iter().any(|m| m.id() == n.id()) {
            assert_eq!(b, 0, "member {}: no beats reach members", n.info().name);
        }
    }
    // And the partitions are all held, each by one node.
    wait_until("all 16 partitions held, each once", || {
        let held: Vec<u32> = nodes
            .iter()
            .flat_map(|n| n.owned().into_iter().map(|g| g.partition))
            .collect();
        let distinct: std::collections::BTreeSet<u32> = held.iter().copied().collect();
        held.len() == 16 && distinct.len() == 16
    })
    .await;
    shutdown_all(&nodes).await;
}

/// Every node leaving at the same moment (a supervisor stopping the whole
/// deployment): every leave ends within its timeout and nothing panics. The
/// leader's own leave removes it from the voters while the others' leaves
/// wait for the membership lock; those must not then ask openraft for a
/// membership change from a leader outside its membership (in a debug build
/// openraft asserts on that). Races are timing-dependent, so several rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_leaving_at_once_ends_every_leave_and_panics_nothing() {
    init_tracing();
    let panics = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hook = std::panic::take_hook();
    {
        let panics = panics.clone();
        std::panic::set_hook(Box::new(move |info| {
            panics.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            hook(info);
        }));
    }
    for round in 0..ROUNDS_LEAVING_AT_ONCE {
        let nodes = start_cluster(4).await;
        let _apps: Vec<_> = nodes.iter().map(auto_release).collect();
        wait_agreement(&nodes, 3, &format!("round {round}: 4 nodes agree")).await;
        let leaves = nodes.iter().map(|n| {
            let n = n.clone();
            tokio::spawn(async move { n.leave(Duration::from_secs(3)).await })
        });
        for leave in futures::future::join_all(leaves).await {
            // A leave may end without the cluster's acknowledgement (the
            // last ones find nobody left to hear them), but it ends.
            let _ = leave.expect("the leave task ran to its end");
        }
        assert!(nodes.iter().all(|n| n.is_shut_down()), "round {round}");
        assert_eq!(
            panics.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "round {round}: a panic (see above)"
        );
    }
}

const ROUNDS_LEAVING_AT_ONCE: usize = 3;

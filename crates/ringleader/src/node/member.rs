//! The member loop: get into the cluster (bootstrap or join), then heartbeat
//! the leader every interval, apply what it sends back, and find the new
//! leader when the old one goes away.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::Duration;

use crate::clock::Instant;
use futures::future::join_all;

use super::Core;
use crate::bootstrap::{self, Decision, SeedState};
use crate::error::TransportError;
use crate::lease;
use crate::protocol::{HeartbeatOutcome, JoinOutcome, Request, Response};

/// Most peers asked in one round of looking for the leader.
const MAX_HOPS: usize = 12;

pub(crate) async fn run(core: Arc<Core>) {
    let mut tick = crate::clock::interval(core.config.timings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut joined = false;
    let mut leader_addr: Option<String> = None;
    let mut may_elect = true;
    // Not in the cluster, no leader found, yet still a voter in Raft's own
    // membership (see below).
    let mut stranded = false;
    let mut refused_backoff = 0u32;
    loop {
        let poked = tokio::select! {
            _ = core.shutdown.cancelled() => return,
            _ = tick.tick() => false,
            _ = core.heartbeat_now.notified() => true,
        };
        // Only a committed voter may campaign. A voter removed from the set
        // may never receive the final membership entry (the leader stops
        // replicating to it), and would otherwise keep raising its term and
        // disturb the leader when it is added back.
        //
        // Outside the cluster (expelled, say), a node campaigns only while
        // it is stranded: no leader answers its join and Raft still counts
        // it as a voter. The leader may have dropped it from the member
        // table before its voter change committed; if it then holds the
        // longest log, the other voters cannot win without it, and with no
        // leader there is none to disturb (soak seed 24142).
        let is_voter = if joined {
            core.view.with(|s, _| s.voters.contains(&core.id))
        } else {
            stranded
        };
        if is_voter != may_elect {
            set_may_elect(&core, is_voter);
            may_elect = is_voter;
        }
        let leaving = core.leaving.load(Ordering::SeqCst);
        if !joined {
            if leaving {
                continue;
            }
            if core.is_refused() {
                // Refused for good (e.g. another partition count): ask again
                // only now and then, in case the cluster was recreated.
                refused_backoff += 1;
                if refused_backoff % 25 != 0 {
                    continue;
                }
            }
            let found = join_round(&core).await;
            stranded = found.is_none() && core.raft_voters().contains(&core.id);
            if let Some(addr) = found {
                joined = true;
                core.clear_refused();
                leader_addr = Some(addr);
                // A bootstrapping node must be able to elect itself at once.
                set_may_elect(&core, true);
                may_elect = true;
            }
            continue;
        }
        if core.raft_leads() {
            continue;
        }
        // A voter's session and lease ride on the leader's beats
        // (crate::beat). Its own heartbeat still goes out when the leader
        // poked it, when it has releases to report, and whenever the beats
        // stop renewing it: a new leader, or one that no longer knows it.
        let t = &core.config.timings;
        let window = crate::beat::skip_window(t.heartbeat, t.raft_heartbeat, t.lease);
        if !poked
            && core.beats().covers(Instant::now(), window)
            && core.pending_releases().is_empty()
        {
            continue;
        }
        match heartbeat_round(&core, &mut leader_addr).await {
            Beat::Renewed | Beat::NoLeader => {}
            Beat::Expelled if leaving => {}
            Beat::Expelled => {
                tracing::warn!(node = %core.info.name, "the leader no longer knows this node; rejoining");
                joined = false;
                core.lose_everything();
                // Whatever the view says, this node votes in nothing now.
                set_may_elect(&core, false);
                may_elect = false;
            }
        }
    }
}

impl Core {
    /// Renews this node's lease from `since`, an instant before the leader
    /// renewed its session, and sets the deadlines of its revoking
    /// partitions (`revocations`: partition, milliseconds the leader left
    /// it, counted from no earlier than `since`). Returns whether the
    /// grants need re-evaluating now: the lease had ended (or never
    /// started), or there are deadlines. Otherwise nothing changes until the
    /// old lease end, when the ownership task wakes and re-evaluates anyway.
    pub(crate) fn renew_lease(&self, since: Instant, revocations: Vec<(u32, u64)>) -> bool {
        let t = &self.config.timings;
        let mut ownership = self.ownership.lock().unwrap_or_else(|e| e.into_inner());
        let lapsed = ownership
            .lease_until()
            .is_none_or(|until| until <= Instant::now());
        let reevaluate = lapsed || !revocations.is_empty();
        ownership.renew(since + lease::holder_validity(t.lease, t.clock_drift_ppm));
        for (p, ms) in revocations {
            let left = Duration::from_millis(ms);
            ownership
                .revocation_deadline(p, since + lease::holder_revocation(left, t.clock_drift_ppm));
        }
        reevaluate
    }
}

/// Lets Raft campaign on this node or not.
///
/// Only `elect` is switched, never openraft's tick: a leader that removes
/// itself from the voters steps down at a tick after the removal commits,
/// and this loop may see the View without it first. Switching the tick off
/// here raced that step-down and could leave a leader outside the voter set
/// for good (soak seed 40079). The tick's cost on nodes that do not need it
/// is saved by the node's tick gate instead (`runtime::TickGate`).
fn set_may_elect(core: &Core, may: bool) {
    core.raft.runtime_config().elect(may);
}

/// The address this node appears under in its seed list: its advertised
/// address, or a seed that names the socket it is bound to.
fn me_in_seeds(core: &Core, seeds: &BTreeSet<String>) -> String {
    if seeds.contains(&core.info.addr) {
        return core.info.addr.clone();
    }
    seeds
        .iter()
        .find(|s| s.parse::<SocketAddr>().ok() == Some(core.local_addr))
        .cloned()
        .unwrap_or_else(|| core.info.addr.clone())
}

/// Peer addresses worth asking about the cluster: members we know of (voters
/// first), then seeds; never ourselves.
pub(crate) fn known_peers(core: &Core) -> Vec<String> {
    let mut out: Vec<String> = core.view.with(|state, _| {
        let mut rows: Vec<(bool, &String)> = state
            .members
            .iter()
            .map(|(id, m)| (!state.voters.contains(id), &m.info.addr))
            .collect();
        rows.sort();
        rows.into_iter().map(|(_, a)| a.clone()).collect()
    });
    out.extend(bootstrap::normalize_seeds(&core.config.seeds));
    let seeds = bootstrap::normalize_seeds(&core.config.seeds);
    let me = me_in_seeds(core, &seeds);
    let mut seen = BTreeSet::new();
    out.retain(|a| *a != core.info.addr && *a != me && seen.insert(a.clone()));
    out
}

/// One attempt to get into the cluster. Returns the leader's address once
/// this node is in.
async fn join_round(core: &Arc<Core>) -> Option<String> {
    let seeds = bootstrap::normalize_seeds(&core.config.seeds);
    let me = me_in_seeds(core, &seeds);
    let answers = join_all(
        bootstrap::peers_to_probe(&me, &seeds)
            .into_iter()
            .map(|addr| {
                let core = core.clone();
                async move {
                    let mut refusal = None;
                    let state = match core
                        .transport
                        .call(&addr, Request::Probe, core.config.timings.rpc_timeout)
                        .await
                    {
                        Ok(Response::Probe(info)) if info.clustered => SeedState::Clustered {
                            leader: info.leader.map(|l| l.addr),
                        },
                        Ok(Response::Probe(_)) => SeedState::Unclustered,
                        Err(TransportError::Handshake(e)) => {
                            refusal = Some(format!("seed {addr} refused the handshake: {e}"));
                            SeedState::Unreachable
                        }
                        _ => SeedState::Unreachable,
                    };
                    ((addr, state), refusal)
                }
            }),
    )
    .await;
    let refusals: Vec<String> = answers.iter().filter_map(|(_, r)| r.clone()).collect();
    let probes: Vec<(String, SeedState)> = answers.into_iter().map(|(p, _)| p).collect();
    // Seeds that refuse our cluster name or secret, with none answering
    // properly, mean this node is misconfigured: say so clearly.
    if !refusals.is_empty() && probes.iter().all(|(_, s)| *s == SeedState::Unreachable) {
        tracing::error!(reason = %refusals[0], "cannot join: check the cluster name and secret");
        core.set_refused(refusals.join("; "));
        return None;
    }
    // A node that was in the cluster before (expelled, rejoining) knows
    // members beyond the seeds: try them too.
    let mut decision = bootstrap::decide(&me, &seeds, &probes);
    let previously_known: Vec<String> = known_peers(core)
        .into_iter()
        .filter(|a| !seeds.contains(a))
        .collect();
    if !previously_known.is_empty() {
        decision = match decision {
            Decision::Join(mut targets) => {
                targets.extend(previously_known);
                Decision::Join(targets)
            }
            _ => Decision::Join(previously_known),
        };
    }
    match decision {
        Decision::Bootstrap => bootstrap_cluster(core).await,
        Decision::Join(targets) => join_via(core, targets).await,
        Decision::Wait => {
            tracing::debug!(?probes, "waiting for the cluster to form");
            None
        }
    }
}

async fn bootstrap_cluster(core: &Arc<Core>) -> Option<String> {
    let members = BTreeMap::from([(core.id, core.info.clone())]);
    match core.raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(node = %core.info.name, "bootstrapped a new cluster");
            Some(core.info.addr.clone())
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not bootstrap");
            None
        }
    }
}

async fn join_via(core: &Arc<Core>, targets: Vec<String>) -> Option<String> {
    let mut queue: VecDeque<String> = targets.into();
    let mut visited = BTreeSet::new();
    while let Some(addr) = queue.pop_front() {
        if addr == core.info.addr || !visited.insert(addr.clone()) || visited.len() > MAX_HOPS {
            continue;
        }
        let request = Request::Join {
            id: core.id,
            info: core.info.clone(),
            num_partitions: core.config.num_partitions,
            incarnation: core.incarnation,
        };
        match core
            .transport
            .call(&addr, request, core.config.timings.rpc_timeout * 4)
            .await
        {
            Ok(Response::Join(JoinOutcome::Admitted)) => {
                tracing::info!(node = %core.info.name, leader = %addr, "joined the cluster");
                return Some(addr);
            }
            Ok(Response::Join(JoinOutcome::NotLeader { leader: Some(l) })) => {
                queue.push_front(l.addr)
            }
            Ok(Response::Join(JoinOutcome::NotNow(reason))) => {
                tracing::warn!(%addr, %reason, "the leader will not admit this node yet");
            }
            Ok(Response::Join(JoinOutcome::Refused(reason))) => {
                tracing::error!(%reason, "the cluster refused this node");
                core.set_refused(reason);
                return None;
            }
            Ok(other) => tracing::debug!(%addr, ?other, "join: no admission"),
            Err(e) => tracing::debug!(%addr, error = %e, "join: peer unreachable"),
        }
    }
    None
}

enum Beat {
    Renewed,
    NoLeader,
    Expelled,
}

async fn heartbeat_round(core: &Arc<Core>, leader_addr: &mut Option<String>) -> Beat {
    let mut queue: VecDeque<String> = VecDeque::new();
    queue.extend(leader_addr.take());
    queue.extend(core.leader_hint().map(|l| l.addr));
    // Every known peer only once those fail: the list costs O(N log N)
    // allocations, and the leader nearly always answers first (at 1000
    // nodes, building it on every beat was a third of the simulator's time).
    let mut widened = false;
    let mut visited = BTreeSet::new();
    loop {
        if queue.is_empty() && !widened {
            widened = true;
            queue.extend(known_peers(core));
        }
        let Some(addr) = queue.pop_front() else {
            break;
        };
        if addr == core.info.addr || !visited.insert(addr.clone()) || visited.len() > MAX_HOPS {
            continue;
        }
        let (known_created, known_index) = core.view.with(|s, _| (s.created_secs(), s.index));
        let request = Request::Heartbeat {
            id: core.id,
            known_created,
            known_index,
            released: core.pending_releases(),
        };
        // The lease counts from before the request left (see crate::lease).
        let sent = Instant::now();
        match core
            .transport
            .call(&addr, request, core.config.timings.rpc_timeout)
            .await
        {
            Ok(Response::Heartbeat(HeartbeatOutcome::Ack {
                update,
                suspects,
                revocations,
            })) => {
                let reevaluate = core.renew_lease(sent, revocations);
                core.stats
                    .renewals_by_heartbeat
                    .fetch_add(1, Ordering::Relaxed);
                // A changed table wakes the ownership task by itself.
                core.view.on_update(update, suspects);
                if reevaluate {
                    core.ownership_changed.notify_one();
                }
                let rtt = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                core.stats
                    .heartbeat_rtt_micros
                    .store(rtt, Ordering::Relaxed);
                *leader_addr = Some(addr);
                return Beat::Renewed;
            }
            Ok(Response::Heartbeat(HeartbeatOutcome::NotLeader { leader: Some(l) })) => {
                queue.push_front(l.addr)
            }
            Ok(Response::Heartbeat(HeartbeatOutcome::UnknownMember)) => return Beat::Expelled,
            Ok(_) => {}
            Err(e) => tracing::debug!(%addr, error = %e, "heartbeat failed"),
        }
    }
    Beat::NoLeader
}

//! Answers requests from peers.

use std::sync::Arc;

use crate::clock::Instant;
use futures::future::BoxFuture;
use openraft::raft::{AppendEntriesResponse, VoteRequest, VoteResponse};

use super::{Core, leader};
use crate::protocol::{HeartbeatOutcome, JoinOutcome, LeaveOutcome, ProbeInfo, Request, Response};
use crate::transport::{Handler, Peer};
use crate::types::{LeaveReason, NodeId, NodeInfo};

/// The node's [`Handler`].
pub(crate) struct PeerHandler(pub(crate) Arc<Core>);

impl Handler for PeerHandler {
    fn handle(&self, peer: Peer, request: Request) -> BoxFuture<'_, Response> {
        Box::pin(async move {
            let partitions = self.0.config.num_partitions;
            if let Err(why) = request.check_sender(peer.id, partitions) {
                self.0
                    .wire_stats
                    .requests_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(peer = peer.id, why, "request refused");
                return Response::Error(why.into());
            }
            handle(&self.0, request).await
        })
    }
}

/// A vote request, through this node's [`crate::vote_gate::VoteGate`]:
/// refused without asking Raft within a leader lease of a quorum
/// confirmation this node's own lease rests on.
async fn vote(core: &Arc<Core>, rpc: VoteRequest<NodeId>) -> Response {
    let hold = core.config.timings.election_timeout_max;
    if !core.vote_gate().try_pass_vote(Instant::now(), hold) {
        // Our own (lower) vote and no log id: the candidate counts it as
        // not granted and changes nothing else.
        let mine = core.raft.metrics().borrow().vote;
        return Response::Vote(Ok(VoteResponse::new(mine, None, false)));
    }
    /// Marks the vote answered even if this future is dropped: Raft got
    /// the request on the first poll and handles it regardless.
    struct Answered<'a>(&'a Core);
    impl Drop for Answered<'_> {
        fn drop(&mut self) {
            self.0.vote_gate().vote_done(Instant::now());
        }
    }
    let _answered = Answered(core);
    Response::Vote(core.raft.vote(rpc).await)
}

/// Hands an AppendEntries to Raft; also says whether Raft accepted the
/// sender as its leader.
async fn append_entries(
    core: &Arc<Core>,
    rpc: openraft::raft::AppendEntriesRequest<crate::raft::TypeConfig>,
    received: Instant,
) -> (
    Result<AppendEntriesResponse<NodeId>, openraft::error::RaftError<NodeId>>,
    bool,
) {
    let response = core.raft.append_entries(rpc).await;
    let accepted = matches!(
        &response,
        Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))
    );
    if accepted {
        // openraft accepted the sender as leader and restarted its election
        // timer (after `received`): it will not campaign before its leader
        // lease (election_timeout_max) and its own election timeout have
        // passed.
        let t = &core.config.timings;
        let hold = crate::runtime::follower_tick_hold(
            t.election_timeout_min,
            t.election_timeout_max,
            t.raft_heartbeat,
        );
        if let Some(until) = received.checked_add(hold) {
            core.tick.hold_until(until);
        }
    }
    (response, accepted)
}

async fn handle(core: &Arc<Core>, request: Request) -> Response {
    match request {
        Request::AppendEntries { target, rpc } => {
            if target != core.id {
                return Response::WrongTarget { actual: core.id };
            }
            Response::AppendEntries(append_entries(core, rpc, Instant::now()).await.0)
        }
        Request::Beat {
            target,
            rpc,
            round,
            renewed,
            revocations,
            suspects,
            table,
        } => {
            if target != core.id {
                return Response::WrongTarget { actual: core.id };
            }
            let received = Instant::now();
            let vote = rpc.vote;
            let (response, accepted) = append_entries(core, rpc, received).await;
            // Renew only with a table at least as new as the leader's when it
            // built the beat: an older one may still show partitions the
            // leader has since taken back (a voter catching up on its log).
            let renewed = renewed.filter(|_| {
                core.view
                    .with(|s, _| s.created_secs() == table.0 && s.index >= table.1)
            });
            let from = if accepted {
                core.beats().accepted(vote, round, renewed, received)
            } else {
                None
            };
            if let Some(from) = from {
                let reevaluate = core.renew_lease(from, revocations);
                core.stats
                    .renewals_by_beat
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                core.view.set_suspects(suspects.into_iter().collect());
                if reevaluate {
                    core.ownership_changed.notify_one();
                }
            }
            Response::AppendEntries(response)
        }
        Request::Vote { target, rpc } => {
            if target != core.id {
                return Response::WrongTarget { actual: core.id };
            }
            vote(core, rpc).await
        }
        Request::InstallSnapshot { target, rpc } => {
            if target != core.id {
                return Response::WrongTarget { actual: core.id };
            }
            Response::InstallSnapshot(core.raft.install_snapshot(rpc).await)
        }
        Request::Probe => Response::Probe(ProbeInfo {
            id: core.id,
            clustered: core.view.with(|s, _| s.identity.is_some()),
            leader: core.leader_hint(),
        }),
        Request::Join {
            id,
            info,
            num_partitions,
            incarnation,
        } => Response::Join(join(core, id, info, num_partitions, incarnation).await),
        Request::Heartbeat {
            id,
            known_created,
            known_index,
            released,
        } => {
            let answer = heartbeat(core, id, known_created, known_index);
            if matches!(answer, HeartbeatOutcome::Ack { .. }) && !released.is_empty() {
                core.note_released(id, &released);
            }
            Response::Heartbeat(answer)
        }
        Request::Leave { id } => Response::Leave(leave(core, id).await),
        Request::Poke { target } => {
            let me = target == core.id;
            if me {
                core.heartbeat_now.notify_one();
            }
            Response::Poked(me)
        }
        Request::Release { id, partitions } => {
            if !core.raft_thinks_it_leads() {
                return Response::Released(false);
            }
            core.note_released(id, &partitions);
            Response::Released(true)
        }
    }
}

async fn join(
    core: &Arc<Core>,
    id: NodeId,
    info: NodeInfo,
    num_partitions: u32,
    incarnation: u64,
) -> JoinOutcome {
    if let Err(e) = crate::limits::check_info(&info) {
        return JoinOutcome::Refused(format!("invalid node description: {e}"));
    }
    if !core.raft_leads() {
        return JoinOutcome::NotLeader {
            leader: core.leader_hint(),
        };
    }
    let state = core.sm.state();
    if let Some(identity) = &state.identity {
        if identity.num_partitions != num_partitions {
            return JoinOutcome::Refused(format!(
                "cluster {:?} has {} partitions; this node is configured with {}",
                identity.name, identity.num_partitions, num_partitions
            ));
        }
    }
    let known = state.members.get(&id);
    if let Some(member) = known {
        if incarnation < member.incarnation {
            return JoinOutcome::NotNow(format!(
                "node {id} has started again since this join was sent"
            ));
        }
        if !core.touch_if_fresh(id) {
            // Being expired: it may rejoin once the removal is committed.
            return JoinOutcome::NotLeader { leader: None };
        }
        if incarnation == member.incarnation && info == member.info {
            return JoinOutcome::Admitted;
        }
    }
    if known.is_none() && state.members.len() >= crate::limits::MAX_MEMBERS {
        return JoinOutcome::NotNow(format!(
            "the cluster has {} members, its limit",
            crate::limits::MAX_MEMBERS
        ));
    }
    // A new incarnation at an address an old one holds: a restart, if the
    // joiner really answers there (one process can listen on an address at
    // a time); otherwise it is trying to take a live member's address.
    let stale: Vec<NodeId> = state
        .members
        .iter()
        .filter(|(other, m)| **other != id && m.info.addr == info.addr)
        .map(|(other, _)| *other)
        .collect();
    if stale.contains(&core.id) {
        return JoinOutcome::Refused(format!("address {} is the leader's", info.addr));
    }
    if !stale.is_empty() && !answers_at(core, id, &info.addr).await {
        // A restart whose probe failed (it may be slow to answer) tries
        // again; a node taking another's address never gets in.
        return JoinOutcome::NotNow(format!(
            "address {} belongs to another member, and node {id} does not answer there",
            info.addr
        ));
    }
    if !stale.is_empty() {
        // The old process is gone, but it may have held partitions under a
        // lease: stop renewing it and let it expire like any silent member.
        tracing::info!(
            ?stale,
            "a new incarnation took over their address; they will expire"
        );
        core.doomed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(stale);
        // A doomed voter is replaced as soon as the admission below
        // commits, which wakes the leader loop (leader::reconcile_voters).
    }
    let admitted = match known {
        Some(_) => leader::readmit(core, id, info, incarnation).await,
        None => leader::add_member(core, id, info, incarnation).await,
    };
    match admitted {
        Ok(()) => JoinOutcome::Admitted,
        Err(e) => {
            tracing::info!(id, error = %e, "join not committed");
            JoinOutcome::NotLeader {
                leader: core.leader_hint(),
            }
        }
    }
}

/// Whether node `id` is the one answering at `addr` now.
async fn answers_at(core: &Arc<Core>, id: NodeId, addr: &str) -> bool {
    let timeout = core.config.timings.rpc_timeout;
    matches!(
        core.transport.call(addr, Request::Probe, timeout).await,
        Ok(Response::Probe(ProbeInfo { id: there, .. })) if there == id
    )
}

fn heartbeat(
    core: &Arc<Core>,
    id: NodeId,
    known_created: u32,
    known_index: u64,
) -> HeartbeatOutcome {
    // Not before take_office has reset the sessions for this term: a stale
    // or missing session would call a live member unknown and make it drop
    // every partition it holds. It will be poked once this node is in office.
    if !core.raft_leads() || !core.in_office() {
        return HeartbeatOutcome::NotLeader {
            leader: core.leader_hint(),
        };
    }
    // Read without copying the state: this runs for every member heartbeat.
    let (is_member, created, index) = core
        .sm
        .read(|s| (s.members.contains_key(&id), s.created_secs(), s.index));
    if is_member && !core.touch_if_fresh(id) {
        // Expired (or doomed) while its removal is being committed: never
        // renew it again, or it would hold partitions past their release.
        return HeartbeatOutcome::UnknownMember;
    }
    if !is_member {
        // Our state machine may still be catching up after an election: only
        // a leader at least as far along as the member may call it unknown.
        if created == known_created && index < known_index {
            return HeartbeatOutcome::NotLeader {
                leader: Some(core.info.clone()),
            };
        }
        return HeartbeatOutcome::UnknownMember;
    }
    HeartbeatOutcome::Ack {
        update: core.sm.update_since(known_created, known_index),
        suspects: core.suspects().into_iter().collect(),
        revocations: core.revocations_for(id),
    }
}

async fn leave(core: &Arc<Core>, id: NodeId) -> LeaveOutcome {
    if !core.raft_leads() {
        return LeaveOutcome::NotLeader {
            leader: core.leader_hint(),
        };
    }
    if !core.sm.state().members.contains_key(&id) {
        return LeaveOutcome::Removed;
    }
    // Partitions first: the node is removed once it holds none. No grant
    // may land between the check and the removal.
    let _no_rebalance = core.rebalance_lock.lock().await;
    if core.drain(id) {
        return LeaveOutcome::InProgress;
    }
    match leader::remove_member(core, id, LeaveReason::Left).await {
        Ok(()) => LeaveOutcome::Removed,
        Err(e) => {
            tracing::info!(id, error = %e, "leave not committed");
            LeaveOutcome::NotLeader {
                leader: core.leader_hint(),
            }
        }
    }
}

impl Core {
    /// Records that `id` was just heard from (leader only).
    pub(crate) fn touch(&self, id: NodeId) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Instant::now());
    }

    fn is_doomed(&self, id: NodeId) -> bool {
        self.doomed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }

    /// Renews `id`'s session if, and only if, it is still fresh, in one
    /// step, so an expiry deciding in between cannot be undone (leader only).
    pub(crate) fn touch_if_fresh(&self, id: NodeId) -> bool {
        if self.is_doomed(id) {
            return false;
        }
        let timeout = self.config.timings.session_timeout;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get_mut(&id) {
            Some(seen) if seen.elapsed() <= timeout => {
                *seen = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Members not heard from for half a session timeout (leader only).
    pub(crate) fn suspects(&self) -> std::collections::BTreeSet<NodeId> {
        let now = Instant::now();
        let half = self.config.timings.session_timeout / 2;
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .iter()
            .filter(|(id, seen)| **id != self.id && now.duration_since(**seen) > half)
            .map(|(id, _)| *id)
            .collect()
    }
}

//! The shell around [`crate::ownership`] (this node's grants and their
//! events) and [`crate::handoff`] (the leader's rebalancing).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::clock::Instant;

use super::Core;
use crate::error::Error;
use crate::events::Event;
use crate::handoff;
use crate::lease;
use crate::ownership::{Change, Grant};
use crate::partitions::{PartitionOp, SlotState};
use crate::protocol::Request;
use crate::state::{ClusterState, Command};
use crate::types::NodeId;

/// The leader's bookkeeping for handoffs; reset when it takes office.
#[derive(Debug, Default)]
pub(crate) struct Handoff {
    /// Leader-clock instant after which each revoking partition may be
    /// released without its owner's acknowledgement.
    deadlines: BTreeMap<u32, Instant>,
    /// Revoking partitions whose owner acknowledged.
    acked: BTreeSet<u32>,
    /// Nodes leaving gracefully: they get no new partitions.
    pub(crate) draining: BTreeSet<NodeId>,
    /// The state (creation stamp, index) at which the last plan was empty
    /// with nothing being revoked: until the state or `draining` changes,
    /// the next plan is empty too, and an idle leader skips computing it.
    settled: Option<(u32, u64)>,
}

impl Handoff {
    /// The deadline of revoking partition `p`, starting the clock now if the
    /// leader has none yet (a later start is always safe: it only delays).
    fn deadline(&mut self, p: u32, now: Instant, timeout: Duration) -> Instant {
        *self.deadlines.entry(p).or_insert(now + timeout)
    }
}

impl Core {
    fn handoff(&self) -> std::sync::MutexGuard<'_, Handoff> {
        self.handoff.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets everything a previous term knew (leader only, on taking office).
    pub(crate) fn reset_handoff(&self) {
        *self.handoff() = Handoff::default();
    }

    /// For `node`'s revoking partitions, milliseconds until the leader may
    /// take each one (leader only; answered with every heartbeat).
    pub(crate) fn revocations_for(&self, node: NodeId) -> Vec<(u32, u64)> {
        // Called on every heartbeat: read in place (no copy of the state),
        // and take the handoff lock only when something is being revoked.
        let revoking: Vec<u32> = self.sm.read(|state| {
            state
                .partitions
                .slots()
                .iter()
                .enumerate()
                .filter(|(_, s)| s.owner == Some(node) && s.state == SlotState::Revoking)
                .map(|(p, _)| u32::try_from(p).unwrap_or(u32::MAX))
                .collect()
        });
        if revoking.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let timeout = self.config.timings.revoke_timeout;
        let mut handoff = self.handoff();
        revoking
            .into_iter()
            .map(|p| {
                let left = handoff
                    .deadline(p, now, timeout)
                    .saturating_duration_since(now);
                (p, u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
            })
            .collect()
    }

    /// Records that `node` released `parts` (partition, grant token); only
    /// a release of the grant being revoked counts (leader only).
    pub(crate) fn note_released(&self, node: NodeId, parts: &[(u32, u64)]) {
        let state = self.sm.state();
        let mut handoff = self.handoff();
        for (p, token) in parts {
            if state.partitions.slot(*p).is_some_and(|s| {
                s.owner == Some(node) && s.state == SlotState::Revoking && s.token == *token
            }) {
                handoff.acked.insert(*p);
                handoff.settled = None;
            }
        }
        drop(handoff);
        self.rebalance_now.notify_one();
    }

    /// Forgets that `node` was leaving: it is (re)admitted. A node that
    /// left gracefully and restarted from its data directory comes back
    /// under the same id, perhaps before a rebalance noticed it gone.
    pub(crate) fn undrain(&self, node: NodeId) {
        let mut handoff = self.handoff();
        if handoff.draining.remove(&node) {
            handoff.settled = None;
        }
    }

    /// Marks `node` as leaving; returns whether it still holds partitions.
    pub(crate) fn drain(&self, node: NodeId) -> bool {
        {
            let mut handoff = self.handoff();
            handoff.draining.insert(node);
            handoff.settled = None;
        }
        self.rebalance_now.notify_one();
        !self.sm.state().partitions.held_by(node).is_empty()
    }

    /// Re-evaluates this node's grants and publishes what changed.
    pub(crate) fn evaluate_ownership(&self) {
        let now = Instant::now();
        let t = &self.config.timings;
        let leading = if self.raft_leads() {
            // The leader's lease runs from its last quorum acknowledgement,
            // and its own revocations follow the deadlines it tells others.
            self.quorum_acked_at()
                .map(|since| (since, self.revocations_for(self.id)))
        } else {
            None
        };
        let changes = {
            let mut ownership = self.ownership.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((since, revocations)) = leading {
                ownership.renew(since + lease::holder_validity(t.lease, t.clock_drift_ppm));
                for (p, ms) in revocations {
                    let left =
                        lease::holder_revocation(Duration::from_millis(ms), t.clock_drift_ppm);
                    ownership.revocation_deadline(p, now + left);
                }
            }
            self.view.with(|state, _| {
                ownership.set_floor(crate::ownership::grant_floor(
                    state,
                    self.id,
                    self.incarnation,
                ));
                ownership.evaluate(&state.partitions, now)
            })
        };
        self.publish_changes(changes, now);
    }

    pub(crate) fn publish_changes(&self, changes: Vec<Change<Instant>>, now: Instant) {
        let events: Vec<Event> = changes
            .into_iter()
            .filter_map(|c| match c {
                Change::Unclaimed(grants) => {
                    self.queue_releases(&grants);
                    None
                }
                other => Some(other),
            })
            .map(|c| match c {
                Change::Assigned(partitions) => Event::PartitionsAssigned { partitions },
                Change::Revoking(partitions, deadline) => Event::PartitionsRevoking {
                    partitions,
                    deadline_ms: u64::try_from(deadline.saturating_duration_since(now).as_millis())
                        .unwrap_or(u64::MAX),
                },
                Change::Lost(partitions) => {
                    self.stats
                        .partitions_lost
                        .fetch_add(partitions.len() as u64, Ordering::Relaxed);
                    Event::PartitionsLost { partitions }
                }
                Change::Unclaimed(grants) => Event::PartitionsLost {
                    partitions: grants.iter().map(|g| g.partition).collect(),
                },
            })
            .collect();
        if !events.is_empty() {
            self.view.emit(events);
        }
    }

    /// Queues releases for the leader: noted at once when this node leads,
    /// and repeated with every heartbeat until the table shows them.
    pub(crate) fn queue_releases(&self, grants: &[Grant]) {
        let pairs: Vec<(u32, u64)> = grants.iter().map(|g| (g.partition, g.token)).collect();
        self.released
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(pairs.iter().copied());
        if self.raft_thinks_it_leads() {
            self.note_released(self.id, &pairs);
        }
    }

    /// Drops every grant (expelled or stopping) and says so.
    pub(crate) fn lose_everything(&self) {
        let lost = self
            .ownership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lose_all();
        if !lost.is_empty() {
            self.view
                .emit(vec![Event::PartitionsLost { partitions: lost }]);
        }
    }
}

/// Keeps this node's grants current: after every change of the committed
/// state or the lease, and when something expires.
pub(crate) async fn run_ownership(core: Arc<Core>) {
    let mut changes = core.view.watch();
    loop {
        core.evaluate_ownership();
        let next = core
            .ownership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_deadline();
        let wake = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = core.shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
            _ = core.ownership_changed.notified() => {}
            _ = crate::clock::sleep_until(wake) => {}
        }
    }
}

/// One rebalancing step (leader only): release what was acknowledged or is
/// past its deadline, revoke what must move, grant what is free.
pub(crate) async fn rebalance(core: &Arc<Core>) -> Result<(), Error> {
    let _exclusive = core.rebalance_lock.lock().await;
    // Our own application's releases (kept until the table shows them).
    let own = core.pending_releases();
    if !own.is_empty() {
        core.note_released(core.id, &own);
    }
    let at = core.sm.read(|s| (s.created_secs(), s.index));
    if own.is_empty() && core.handoff().settled == Some(at) {
        return Ok(());
    }
    let state = core.sm.state();
    if state.partitions.is_empty() {
        return Ok(());
    }
    // Grants of a readmitted node's earlier process: nobody holds them.
    let orphans = crate::ownership::orphaned(&state);
    if !orphans.is_empty() {
        tracing::info!(
            partitions = orphans.len(),
            "releasing the grants of restarted nodes' earlier processes"
        );
        write_op(core, PartitionOp::Release(orphans)).await?;
        core.rebalance_now.notify_one();
        return Ok(());
    }
    let now = Instant::now();
    let timeout = core.config.timings.revoke_timeout;
    let plan = {
        let mut handoff = core.handoff();
        let revoking: BTreeSet<u32> = state
            .partitions
            .slots()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == SlotState::Revoking)
            .map(|(p, _)| u32::try_from(p).unwrap_or(u32::MAX))
            .collect();
        handoff.deadlines.retain(|p, _| revoking.contains(p));
        handoff.acked.retain(|p| revoking.contains(p));
        for p in &revoking {
            handoff.deadline(*p, now, timeout);
        }
        let members: BTreeSet<NodeId> = state.members.keys().copied().collect();
        handoff.draining.retain(|n| members.contains(n));
        let eligible: BTreeSet<NodeId> = members.difference(&handoff.draining).copied().collect();
        handoff::plan(
            &state.partitions,
            &eligible,
            &handoff.deadlines,
            &handoff.acked,
            now,
        )
    };
    if plan.is_empty() {
        let mut handoff = core.handoff();
        if handoff.deadlines.is_empty() && (state.created_secs(), state.index) == at {
            handoff.settled = Some(at);
        }
        return Ok(());
    }
    tracing::debug!(
        release = plan.release.len(),
        revoke = plan.revoke.len(),
        grant = plan.grant.len(),
        "rebalancing"
    );
    core.stats.rebalances.fetch_add(1, Ordering::Relaxed);
    if !plan.release.is_empty() {
        let started: Vec<Instant> = {
            let handoff = core.handoff();
            plan.release
                .iter()
                .filter_map(|p| handoff.deadlines.get(p))
                .map(|d| d.checked_sub(timeout).unwrap_or(*d))
                .collect()
        };
        write_op(core, PartitionOp::Release(plan.release)).await?;
        let millis: u64 = started
            .iter()
            .map(|s| u64::try_from(s.elapsed().as_millis()).unwrap_or(u64::MAX))
            .sum();
        core.stats
            .handoffs
            .fetch_add(started.len() as u64, Ordering::Relaxed);
        core.stats
            .handoff_millis
            .fetch_add(millis, Ordering::Relaxed);
    }
    // Whom the revocations and grants concern: they hear at once.
    let mut concerned: BTreeSet<NodeId> = plan.grant.iter().map(|(_, node)| *node).collect();
    concerned.extend(
        plan.revoke
            .iter()
            .filter_map(|p| state.partitions.slots().get(*p as usize))
            .filter_map(|slot| slot.owner),
    );
    let result = async {
        if !plan.revoke.is_empty() {
            write_op(core, PartitionOp::Revoke(plan.revoke)).await?;
        }
        if !plan.grant.is_empty() {
            let n = plan.grant.len() as u64;
            write_op(core, PartitionOp::Grant(plan.grant)).await?;
            core.stats
                .partitions_granted
                .fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }
    .await;
    poke(core, &state, concerned);
    result
}

/// Commits `op`, in entries of at most [`crate::limits::MAX_OP_PARTITIONS`]
/// partitions each, so no entry outgrows a frame.
pub(crate) async fn write_op(core: &Arc<Core>, op: PartitionOp) -> Result<(), Error> {
    for part in op.split(crate::limits::MAX_OP_PARTITIONS) {
        super::leader::write(core, Command::Partitions(part)).await?;
    }
    Ok(())
}

/// Asks each of `nodes` (but this one) to heartbeat now, without waiting:
/// a lost poke only costs the usual heartbeat interval.
pub(crate) fn poke(core: &Arc<Core>, state: &ClusterState, nodes: BTreeSet<NodeId>) {
    for id in nodes {
        let Some(member) = state.members.get(&id).filter(|_| id != core.id) else {
            continue;
        };
        let addr = member.info.addr.clone();
        let core = core.clone();
        crate::clock::spawn(async move {
            let request = Request::Poke { target: id };
            let timeout = core.config.timings.rpc_timeout;
            if let Err(e) = core.transport.call(&addr, request, timeout).await {
                tracing::debug!(%addr, error = %e, "poke failed");
            }
        });
    }
}

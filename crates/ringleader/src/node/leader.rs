//! What the leader does: take office (announce the epoch), expire silent
//! sessions, keep the voter set at its target size, and carry out joins and
//! leaves. Also the leaving side of a graceful leave.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::clock::Instant;
use openraft::ChangeMembers;

use super::Core;
use crate::error::Error;
use crate::lease;
use crate::protocol::{LeaveOutcome, Request, Response};
use crate::state::{ClusterIdentity, Command};
use crate::types::{LeaveReason, NodeId, NodeInfo};

fn raft_err(e: impl std::fmt::Display) -> Error {
    Error::Raft(e.to_string())
}

/// How long one Raft write or membership change may take before the
/// leader gives up on it (and retries on a later tick).
fn raft_deadline(core: &Core) -> Duration {
    core.config.timings.session_timeout * 2
}

async fn bounded<T, E: std::fmt::Display>(
    core: &Core,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match crate::clock::timeout(raft_deadline(core), fut).await {
        Ok(result) => result.map_err(raft_err),
        Err(_) => Err(Error::Raft(format!("{what} timed out"))),
    }
}

pub(crate) async fn write(core: &Core, command: Command) -> Result<u64, Error> {
    // An entry no frame can carry would stop replication for good.
    let bytes = postcard::experimental::serialized_size(&command).map_err(raft_err)?;
    if bytes > crate::limits::MAX_ENTRY_BYTES {
        debug_assert!(false, "a {bytes}-byte entry was about to be proposed");
        return Err(Error::Raft(format!(
            "refused to propose a {bytes}-byte entry (limit {})",
            crate::limits::MAX_ENTRY_BYTES
        )));
    }
    let response = bounded(core, "write", core.raft.client_write(command)).await?;
    Ok(response.log_id.index)
}

/// Takes the membership lock, but only while this node still leads. A
/// change that waited for the lock may find that the change before it
/// removed this leader from the voters (its own leave, racing another
/// node's): openraft keeps such a leader in office until it steps down, and
/// must not be asked for another membership change meanwhile (openraft
/// #923; a debug build asserts, and a release build would append the entry
/// for a leader outside its own membership).
async fn membership_change(core: &Core) -> Result<tokio::sync::MutexGuard<'_, ()>, Error> {
    let guard = core.membership_lock.lock().await;
    if !core.raft_leads() {
        return Err(Error::NoLeader(
            "this node stopped leading before its membership change".into(),
        ));
    }
    Ok(guard)
}

/// Makes `voters` the voter set; nodes removed from it stop being Raft
/// members altogether.
async fn set_voters(core: &Core, voters: BTreeSet<NodeId>) -> Result<(), Error> {
    bounded(
        core,
        "membership change",
        core.raft.change_membership(voters, false),
    )
    .await
    .map(|_| ())
}

/// The voter to drop when a set must get smaller: this node if it is
/// leaving (it must not stay behind as the voter the rest depend on), else
/// a suspect, else the latest to join (members no longer in the table count
/// as latest); never this node otherwise.
fn voter_to_drop(core: &Core, voters: &BTreeSet<NodeId>) -> Option<NodeId> {
    if core.leaving.load(std::sync::atomic::Ordering::SeqCst)
        && voters.contains(&core.id)
        && voters.len() > 1
    {
        return Some(core.id);
    }
    let state = core.sm.state();
    let suspects = core.suspects();
    voters
        .iter()
        .copied()
        .filter(|v| *v != core.id)
        .max_by_key(|v| {
            let joined = state.members.get(v).map_or(u64::MAX, |m| m.joined_index);
            (suspects.contains(v), joined)
        })
}

/// Shrinks a voter set that has to shrink to an odd size, never below one.
/// An even set tolerates no more failures than the odd one below it, and
/// needs more of its voters: a 2-voter set needs both, so if the change to
/// it stalls half done (one of them lost for good: a restart takes a new
/// id), no candidate can ever win again (the simulator found this with a
/// paused voter and a restarted one, seed 3289).
fn shrink_to_odd(core: &Core, voters: &mut BTreeSet<NodeId>) {
    if voters.len() % 2 == 0 && voters.len() > 1 {
        if let Some(drop) = voter_to_drop(core, voters) {
            voters.remove(&drop);
        }
    }
}

/// The leader-duty loop; idle while this node does not lead.
pub(crate) async fn run(core: Arc<Core>) {
    // Raft's role, term, leader or membership changing, and newly applied
    // entries, wake the loop. (Not Raft's full metrics: openraft republishes
    // those on every message it handles, dozens of times a second.)
    let mut server = core.raft.server_metrics();
    let mut applied = core.view.watch();
    // While a learner catches up to be promoted, replication progress (in
    // the full metrics) wakes the loop too, so a promotion follows the
    // catch-up at once rather than a tick later: until then a new
    // cluster's first voter is its only one.
    let mut full = core.raft.metrics();
    let mut learners_pending = false;
    // Expiries, releases and Raft changes wake the loop themselves; the tick
    // only paces retries and revocation deadlines.
    let period = core.config.timings.heartbeat;
    let mut tick = crate::clock::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The Raft term in which this node last took office.
    let mut in_office: Option<u64> = None;
    loop {
        // A node Raft does not make leader has no duty here until its role
        // changes: it sleeps without a timer, which keeps an idle follower's
        // wake-ups, and so its CPU, down. Read the role from `server`, the
        // channel that wakes us: openraft publishes its full metrics after
        // it, so on a multi-threaded runtime they can still show the old
        // role when we wake, and we would then sleep through leadership.
        let duty = {
            let s = server.borrow();
            s.state == openraft::ServerState::Leader && s.current_leader == Some(core.id)
        };
        // Wake exactly when the next session would expire, not a tick later.
        let expiry = next_expiry(&core).unwrap_or_else(|| Instant::now() + period);
        tokio::select! {
            _ = core.shutdown.cancelled() => return,
            _ = tick.tick(), if duty => {}
            _ = crate::clock::sleep_until(expiry), if duty => {}
            _ = core.rebalance_now.notified(), if duty => {}
            changed = server.changed() => if changed.is_err() { return },
            changed = applied.changed(), if duty => if changed.is_err() { return },
            changed = full.changed(), if learners_pending => if changed.is_err() { return },
        }
        let term = server.borrow_and_update().vote.leader_id().get_term();
        applied.borrow_and_update();
        if !core.raft_leads() {
            // Sessions, doomed members and handoffs are kept while the term
            // lasts: a momentary lapse of the quorum check must not forget
            // an expiry whose removal may still commit. A new term starts
            // afresh in take_office, after committing everything before it.
            learners_pending = false;
            continue;
        }
        if in_office != Some(term) {
            match take_office(&core, term).await {
                Ok(epoch) => {
                    tracing::info!(node = %core.info.name, term, epoch, "took office as leader");
                    in_office = Some(term);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not take office yet");
                    continue;
                }
            }
        }
        core.view.set_suspects(core.suspects());
        expire_sessions(&core).await;
        if let Err(e) = reconcile_voters(&core).await {
            tracing::warn!(error = %e, "voter reconciliation failed; will retry");
        }
        learners_pending = full
            .borrow_and_update()
            .membership_config
            .membership()
            .learner_ids()
            .next()
            .is_some();
        if let Err(e) = super::owner::rebalance(&core).await {
            tracing::warn!(error = %e, "rebalancing failed; will retry");
        }
    }
}

/// Waits for the next whole wall-clock second and returns it: the creation
/// stamp of a new cluster life (see [`crate::token`]).
async fn next_whole_second(core: &Core) -> u32 {
    let now = (core.wall_clock)();
    let wait =
        Duration::from_secs(1).saturating_sub(Duration::from_nanos(u64::from(now.subsec_nanos())));
    crate::clock::sleep(wait).await;
    u32::try_from(now.as_secs() + 1).unwrap_or(u32::MAX)
}

/// Starts a leadership: every member gets a full session timeout from now,
/// the cluster is stamped if new, and the epoch is committed.
async fn take_office(core: &Arc<Core>, term: u64) -> Result<u64, Error> {
    // Apply everything committed before this term so the state is current.
    bounded(core, "read barrier", core.raft.ensure_linearizable()).await?;
    let state = core.sm.state();
    core.reset_handoff();
    core.doomed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    {
        let now = Instant::now();
        let mut sessions = core.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.clear();
        for id in state.members.keys() {
            sessions.insert(*id, now);
        }
        // The previous epoch's leader lost its own lease's basis (a quorum
        // confirmation) at least a voter's leader lease before this term:
        // start its session that much earlier, so a crashed leader's
        // partitions move sooner without shortening anyone's lease.
        // Not when this node is the only voter: openraft then elects it at
        // once, with no other voter's refusal and no election timeout
        // between the previous leader's last confirmation and this term
        // (soak seed 3536: a leader finished a change to a set without
        // itself, and the sole remaining voter took office immediately).
        let sole_voter = core.raft_voters().iter().all(|v| *v == core.id);
        if let Some(previous) = state.leader.filter(|l| *l != core.id && !sole_voter) {
            if sessions.contains_key(&previous) {
                let t = &core.config.timings;
                let head = lease::predecessor_head_start(t.election_timeout_max, t.clock_drift_ppm);
                sessions.insert(previous, now.checked_sub(head).unwrap_or(now));
            }
        }
    }
    if state.identity.is_none() {
        let created_secs = next_whole_second(core).await;
        write(
            core,
            Command::Init(ClusterIdentity {
                name: core.config.cluster.clone(),
                created_secs,
                num_partitions: core.config.num_partitions,
            }),
        )
        .await?;
    }
    match state.members.get(&core.id) {
        None if !core.leaving.load(Ordering::SeqCst) => {
            write(
                core,
                Command::AddMember {
                    id: core.id,
                    info: core.info.clone(),
                    incarnation: core.incarnation,
                },
            )
            .await?;
        }
        // This process is a restart of the member the table knows (a
        // leader never joins through itself): take back what the previous
        // process held, as `server::join` does for others.
        Some(me) if me.incarnation < core.incarnation || me.info != core.info => {
            readmit(core, core.id, core.info.clone(), core.incarnation).await?;
        }
        _ => {}
    }
    write(core, Command::NewEpoch { leader: core.id }).await?;
    // Heartbeats are judged from now on (sessions are this term's).
    core.office_term.store(term, Ordering::SeqCst);
    // Members are looking for the new leader (their leases run out a lease
    // after the old one last answered): tell them at once.
    let state = core.sm.state();
    super::owner::poke(core, &state, state.members.keys().copied().collect());
    Ok(state.epoch)
}

fn session_snapshot(core: &Core, members: &BTreeSet<NodeId>) -> BTreeMap<NodeId, Instant> {
    let now = Instant::now();
    let mut sessions = core.sessions.lock().unwrap_or_else(|e| e.into_inner());
    sessions.retain(|id, _| members.contains(id));
    for id in members {
        sessions.entry(*id).or_insert(now);
    }
    sessions.clone()
}

/// Just after the earliest moment a session (not ours) could expire, and at
/// least 20 ms from now; None while this node does not lead.
fn next_expiry(core: &Core) -> Option<Instant> {
    if !core.raft_thinks_it_leads() {
        return None;
    }
    let sessions = core.sessions.lock().unwrap_or_else(|e| e.into_inner());
    sessions
        .iter()
        .filter(|(id, _)| **id != core.id)
        .map(|(_, seen)| *seen)
        .min()
        .map(|seen| seen + core.config.timings.session_timeout + Duration::from_millis(1))
        // A session whose removal failed is past due: retry at a calm pace.
        .map(|at| at.max(Instant::now() + Duration::from_millis(20)))
}

async fn expire_sessions(core: &Arc<Core>) {
    let members: BTreeSet<NodeId> = core.sm.read(|s| s.members.keys().copied().collect());
    let now = Instant::now();
    let timeout = core.config.timings.session_timeout;
    core.doomed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|id| members.contains(id));
    let expired: Vec<NodeId> = session_snapshot(core, &members)
        .into_iter()
        .filter(|(id, seen)| *id != core.id && now.duration_since(*seen) > timeout)
        .map(|(id, _)| id)
        .collect();
    for id in expired {
        tracing::info!(id, "session expired; removing member");
        core.stats
            .session_expirations
            .fetch_add(1, Ordering::Relaxed);
        // Never renewed again, whatever happens to the removal below.
        core.doomed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        if let Err(e) = remove_member(core, id, LeaveReason::Expired).await {
            tracing::warn!(id, error = %e, "could not remove expired member");
        }
    }
}

/// Admits `id` to the member table (leader only).
pub(crate) async fn add_member(
    core: &Arc<Core>,
    id: NodeId,
    info: NodeInfo,
    incarnation: u64,
) -> Result<(), Error> {
    core.touch(id);
    core.undrain(id);
    write(
        core,
        Command::AddMember {
            id,
            info,
            incarnation,
        },
    )
    .await?;
    Ok(())
}

/// Admits member `id` again, as `incarnation` at `info` (leader only).
///
/// Every partition the table shows it holding becomes an orphan
/// ([`crate::ownership::orphaned`]), which the next rebalance releases at
/// once and grants again, with new tokens: a new process of the node (a
/// restart from its data directory) acts only on grants above its own
/// admission ([`crate::ownership::grant_floor`]), and the process that held
/// them is gone (one process per data directory; and only a process
/// holding no grant ever sends a join).
pub(crate) async fn readmit(
    core: &Arc<Core>,
    id: NodeId,
    info: NodeInfo,
    incarnation: u64,
) -> Result<(), Error> {
    let previous = core.sm.read(|s| s.members.get(&id).cloned());
    let moved = previous.is_some_and(|m| m.info.addr != info.addr);
    tracing::info!(id, incarnation, "readmitting a restarted node");
    add_member(core, id, info.clone(), incarnation).await?;
    if moved && core.raft_voters().contains(&id) {
        // Raft reaches voters through its own copy of their address.
        let _guard = membership_change(core).await?;
        let nodes = BTreeMap::from([(id, info)]);
        bounded(
            core,
            "voter address change",
            core.raft
                .change_membership(ChangeMembers::SetNodes(nodes), false),
        )
        .await?;
    }
    core.rebalance_now.notify_one();
    Ok(())
}

/// Removes `id` (not this node) from the voter set, then from the member
/// table (leader only).
pub(crate) async fn remove_member(
    core: &Arc<Core>,
    id: NodeId,
    reason: LeaveReason,
) -> Result<(), Error> {
    let _guard = membership_change(core).await?;
    let voters = core.raft_voters();
    if id != core.id && voters.contains(&id) {
        let mut next: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
        // Swap in a replacement in the same change when one is at hand: a
        // removal alone would leave an even voter set that a second failure
        // could stall before the replacement arrives.
        if let Some(heir) = replacement(core, &voters, id).await {
            next.insert(heir);
        }
        // Someone who could take the place later (a non-voter member).
        let spare = core
            .sm
            .read(|s| s.members.keys().any(|m| *m != id && !voters.contains(m)));
        if next.len() % 2 == 1 || next.is_empty() || !spare {
            // Nobody could ever take the place: shrink, to an odd set.
            shrink_to_odd(core, &mut next);
            set_voters(core, next).await?;
        } else {
            // No replacement yet: keep the departed voter (it stays in the
            // set until `reconcile_voters` can swap one in). Shrinking to an
            // even set would gain nothing (it tolerates no more failures)
            // and could trap the cluster: if the change reached only a
            // minority before its leader died, and the new set names a node
            // that is then lost for good (a restart takes a new id), no
            // candidate could ever win (the simulator found this with a
            // paused voter, seed 20185).
            tracing::info!(
                id,
                "keeping the departed voter until a replacement has caught up"
            );
        }
    }
    if core.sm.state().members.contains_key(&id) {
        write(core, Command::RemoveMember { id, reason }).await?;
    }
    core.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    Ok(())
}

/// A live non-voter member, caught up as a learner, to take `leaving`'s
/// place among the voters; None if there is none or it cannot catch up in
/// time.
async fn replacement(
    core: &Arc<Core>,
    voters: &BTreeSet<NodeId>,
    leaving: NodeId,
) -> Option<NodeId> {
    let state = core.sm.state();
    let suspects = core.suspects();
    let (id, info) = state
        .members
        .iter()
        .filter(|(m, _)| **m != leaving && !voters.contains(m) && !suspects.contains(m))
        .min_by_key(|(m, member)| (member.joined_index, **m))
        .map(|(m, member)| (*m, member.info.clone()))?;
    let catch_up = core.raft.add_learner(id, info, true);
    match crate::clock::timeout(core.config.timings.session_timeout, catch_up).await {
        Ok(Ok(_)) => Some(id),
        Ok(Err(e)) => {
            tracing::warn!(id, error = %e, "replacement voter could not be added");
            None
        }
        Err(_) => {
            tracing::warn!(id, "replacement voter did not catch up in time");
            None
        }
    }
}

/// The voter count to aim for: the largest odd number no greater than the
/// target and the number of live members (an even voter set tolerates no
/// more failures than the odd one below it).
pub(crate) fn desired_voters(target: usize, live: usize) -> usize {
    let n = target.min(live).max(1);
    if n % 2 == 0 { n - 1 } else { n }
}

async fn reconcile_voters(core: &Arc<Core>) -> Result<(), Error> {
    let _guard = membership_change(core).await?;
    let unfinished = {
        let m = core.raft.metrics();
        let m = m.borrow();
        let joint = m.membership_config.membership().get_joint_config();
        (joint.len() > 1).then(|| joint.last().cloned().unwrap_or_default())
    };
    if let Some(target) = unfinished {
        // We hold the membership lock, so no change of ours is running: a
        // joint configuration here is one whose second step failed (an
        // election interrupted it, or its write timed out). Left alone it
        // stays joint for good, needing a quorum of both sets. Finish it.
        tracing::info!(?target, "finishing an interrupted membership change");
        return set_voters(core, target).await;
    }
    let (mut voters, learners, caught_up) = {
        let m = core.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        // A learner is ready to vote once it is within a few entries of the log.
        let last = m.last_log_index.unwrap_or(0);
        let caught_up: BTreeSet<NodeId> = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(_, matched)| matched.is_some_and(|l| l.index + 8 >= last))
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default();
        (voters, learners, caught_up)
    };
    let state = core.sm.state();
    let suspects = core.suspects();
    // Members a new incarnation replaced at their address: their process is
    // gone (server::join), so as voters they only stand in the quorum's way.
    let doomed: BTreeSet<NodeId> = core
        .doomed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let is_live = |id: &NodeId| {
        *id == core.id
            || (state.members.contains_key(id) && !suspects.contains(id) && !doomed.contains(id))
    };

    // 1. Voters that are no longer members (removed while this node was not
    //    leading, or a leave cut short), or whose address a new incarnation
    //    took (a restart without a data directory: replaced at once, not a
    //    session timeout later), leave the voter set.
    let stale: BTreeSet<NodeId> = voters
        .iter()
        .copied()
        .filter(|v| *v != core.id && (!state.members.contains_key(v) || doomed.contains(v)))
        .collect();
    //    Never to an even set (see `remove_member`): swap a caught-up
    //    learner in within the same change, starting one first if need be,
    //    and until then keep the stale voters (they cost no more failures
    //    to tolerate than the even set would).
    if !stale.is_empty() {
        voters.retain(|v| !stale.contains(v));
        if voters.len() % 2 == 0 && !voters.is_empty() {
            let heir = learners
                .iter()
                .copied()
                .find(|l| is_live(l) && caught_up.contains(l));
            let spare = state
                .members
                .keys()
                .any(|m| !voters.contains(m) && !doomed.contains(m));
            let Some(heir) = heir.filter(|_| spare) else {
                if !spare {
                    if stale.iter().any(|v| state.members.contains_key(v)) {
                        // A doomed voter whose new incarnation has not
                        // joined yet: it will be the heir. Shrinking now
                        // would leave one voter fewer than needed (the sim's
                        // restart storms took a 3-voter set down to one).
                        return Ok(());
                    }
                    // Nobody could ever take the place: shrink, to an odd
                    // set, as a small cluster must.
                    shrink_to_odd(core, &mut voters);
                    tracing::info!(
                        ?stale,
                        ?voters,
                        "removing voters that are no longer members"
                    );
                    return set_voters(core, voters).await;
                }
                let catching_up = learners.iter().any(is_live);
                let candidate = state
                    .members
                    .iter()
                    .filter(|(id, _)| is_live(id) && !voters.contains(id))
                    .min_by_key(|(id, m)| (m.joined_index, **id));
                if let (false, Some((id, member))) = (catching_up, candidate) {
                    bounded(
                        core,
                        "add learner",
                        core.raft.add_learner(*id, member.info.clone(), false),
                    )
                    .await?;
                }
                return Ok(());
            };
            voters.insert(heir);
        }
        tracing::info!(?stale, "removing voters that are no longer members");
        return set_voters(core, voters).await;
    }

    // 2. Learners that are not live members (promotion abandoned, or the
    //    node died while catching up) stop receiving the log.
    let dead_learners: BTreeSet<NodeId> =
        learners.iter().copied().filter(|l| !is_live(l)).collect();
    if !dead_learners.is_empty() {
        tracing::info!(?dead_learners, "removing learners that are gone");
        return bounded(
            core,
            "learner removal",
            core.raft
                .change_membership(ChangeMembers::RemoveNodes(dead_learners), false),
        )
        .await
        .map(|_| ());
    }

    let live = state.members.keys().filter(|id| is_live(id)).count();
    let desired = desired_voters(core.config.voters, live);

    // 3. An even voter set tolerates no more failures than one voter fewer
    //    but doubles the ways to lose quorum: drop one, a suspect first, else
    //    the latest to join.
    if voters.len() > desired && voters.len() % 2 == 0 {
        if let Some(drop) = voter_to_drop(core, &voters) {
            voters.remove(&drop);
            tracing::info!(demoted = drop, "keeping the voter count odd");
            return set_voters(core, voters).await;
        }
    }
    if voters.len() >= desired {
        return Ok(());
    }

    // 4. Promote learners that have caught up; start new learners otherwise.
    //    Nothing here waits for a learner, so the leader keeps expiring
    //    sessions while a promotion is under way. Never to an even set: a
    //    voter set of two whose newcomer dies for good (a restart comes back
    //    with a new id) can never commit that voter's removal (soak seed
    //    9633). Growing from one voter to three therefore waits for two
    //    caught-up learners and promotes them in one change.
    let needed = desired - voters.len();
    let mut ready: Vec<NodeId> = learners
        .iter()
        .copied()
        .filter(|l| is_live(l) && caught_up.contains(l))
        .take(needed)
        .collect();
    if (voters.len() + ready.len()) % 2 == 0 {
        ready.pop();
    }
    if !ready.is_empty() {
        tracing::info!(promoted = ?ready, "promoting members to voters");
        voters.extend(ready);
        return set_voters(core, voters).await;
    }
    let in_progress = learners.iter().filter(|l| is_live(l)).count();
    let mut candidates: Vec<(&NodeId, &crate::state::Member)> = state
        .members
        .iter()
        .filter(|(id, _)| is_live(id) && !voters.contains(id) && !learners.contains(id))
        .collect();
    candidates.sort_by_key(|(id, m)| (m.joined_index, **id));
    for (id, member) in candidates
        .into_iter()
        .take(needed.saturating_sub(in_progress))
    {
        bounded(
            core,
            "add learner",
            core.raft.add_learner(*id, member.info.clone(), false),
        )
        .await?;
    }
    Ok(())
}

/// The leaving side of a graceful leave: removes this node through the log.
pub(crate) async fn leave(core: &Arc<Core>) -> Result<(), Error> {
    if core.raft_leads() {
        return leave_as_leader(core).await;
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut queue: Vec<String> = core.leader_hint().map(|l| l.addr).into_iter().collect();
        queue.extend(super::member::known_peers(core));
        let mut visited = BTreeSet::new();
        while let Some(addr) = queue.first().cloned() {
            queue.remove(0);
            if addr == core.info.addr || !visited.insert(addr.clone()) {
                continue;
            }
            let request = Request::Leave { id: core.id };
            match core
                .transport
                .call(&addr, request, core.config.timings.rpc_timeout)
                .await
            {
                Ok(Response::Leave(LeaveOutcome::Removed)) => {
                    tracing::info!(node = %core.info.name, "left the cluster");
                    return Ok(());
                }
                Ok(Response::Leave(LeaveOutcome::NotLeader { leader: Some(l) })) => {
                    queue.insert(0, l.addr)
                }
                Ok(Response::Leave(LeaveOutcome::InProgress)) => {
                    // Our partitions are being handed off: ask again soon.
                    break;
                }
                Ok(_) | Err(_) => {}
            }
        }
        if core.raft_leads() {
            return leave_as_leader(core).await;
        }
        if attempts >= 500 {
            return Err(Error::NoLeader("no leader accepted the leave".into()));
        }
        crate::clock::sleep(core.config.timings.heartbeat).await;
    }
}

async fn leave_as_leader(core: &Arc<Core>) -> Result<(), Error> {
    // Hand our partitions off first, as any leaving member does, unless no
    // one is left to take them.
    let alone = core.sm.state().members.keys().all(|m| *m == core.id);
    while !alone && core.drain(core.id) {
        if !core.raft_leads() {
            return Err(Error::NoLeader("lost leadership while leaving".into()));
        }
        let mut changes = core.view.watch();
        let _ = crate::clock::timeout(core.config.timings.heartbeat, changes.changed()).await;
        if !core.raft_leads() {
            return Box::pin(leave(core)).await;
        }
    }
    let _no_rebalance = core.rebalance_lock.lock().await;
    if !alone && core.drain(core.id) {
        // A grant landed after all: hand it off too.
        drop(_no_rebalance);
        return Box::pin(leave_as_leader(core)).await;
    }
    let _guard = membership_change(core).await?;
    write(
        core,
        Command::RemoveMember {
            id: core.id,
            reason: LeaveReason::Left,
        },
    )
    .await?;
    let mut rest: BTreeSet<NodeId> = core.raft_voters();
    rest.remove(&core.id);
    if rest.is_empty() {
        // The only voter is leaving: hand the log to a live member first.
        let state = core.sm.state();
        let suspects = core.suspects();
        let heir = state
            .members
            .iter()
            .filter(|(id, _)| **id != core.id && !suspects.contains(id))
            .min_by_key(|(id, m)| (m.joined_index, **id));
        if let Some((id, member)) = heir {
            bounded(
                core,
                "add heir",
                core.raft.add_learner(*id, member.info.clone(), true),
            )
            .await?;
            rest.insert(*id);
        }
    }
    if !rest.is_empty() {
        // Once this commits, Raft steps this node down and the rest elect.
        set_voters(core, rest).await?;
    }
    tracing::info!(node = %core.info.name, "left the cluster (was leader)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::desired_voters;

    #[test]
    fn voter_target_is_odd_and_bounded() {
        assert_eq!(desired_voters(3, 1), 1);
        assert_eq!(desired_voters(3, 2), 1);
        assert_eq!(desired_voters(3, 3), 3);
        assert_eq!(desired_voters(3, 10), 3);
        assert_eq!(desired_voters(5, 4), 3);
        assert_eq!(desired_voters(5, 9), 5);
        assert_eq!(desired_voters(1, 9), 1);
        assert_eq!(desired_voters(3, 0), 1);
    }
}

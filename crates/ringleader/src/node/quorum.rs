//! The leader's quorum check, which is also its Raft heartbeat and keeps
//! the voters' member sessions.
//!
//! While openraft says this node leads, [`track`] sends every other voter an
//! empty AppendEntries carrying this node's vote each `raft_heartbeat`. A
//! voter that accepts it has not voted for anyone newer, and it restarts its
//! election timer and its leader lease (openraft's `update_vote`). When a
//! quorum of every voter configuration accepted (this node counting
//! itself), [`Core::quorum_acked_at`] moves to the instant the round was
//! *asked*: the quorum answered after it, so the record can only err
//! towards an older acknowledgement, however this process is scheduled.
//!
//! openraft's `ensure_linearizable` asks the same question. It goes through
//! openraft's core task, spawns a task per voter and one more to collect
//! the answers, and then waits for the read index to be applied, which
//! this check never needs. Asking directly makes one round a timer and one
//! answer per voter, all on this task. The requests name no log position
//! (`prev_log_id` and `leader_commit` are `None`), so a follower's log and
//! commit index are left to openraft's own replication.
//!
//! Each request is a [`Request::Beat`]: when a voter's answer arrives while
//! this node acts as leader in office, the voter's session is renewed as by
//! a heartbeat, and the next beat to it names the round renewed, so the
//! voter can renew its lease from when that round reached it (see
//! [`crate::beat`]). Voters need no heartbeats of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::{ServerState, Vote};

use super::Core;
use crate::clock::Instant;
use crate::protocol::{Request, Response};
use crate::types::NodeId;

/// Whether `granted` holds a majority of every configuration in `configs`
/// (one during normal operation, two during a joint membership change).
/// No configurations: no quorum.
pub(crate) fn is_joint_quorum(configs: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    !configs.is_empty()
        && configs
            .iter()
            .all(|c| c.iter().filter(|id| granted.contains(id)).count() * 2 > c.len())
}

/// One confirmation round's question: this node's vote, the voter
/// configurations, and the other voters' addresses.
#[derive(Debug)]
struct Round {
    vote: Vote<NodeId>,
    configs: Vec<BTreeSet<NodeId>>,
    targets: Vec<(NodeId, String)>,
}

impl Round {
    /// The round to ask now, or `None` when openraft does not say this
    /// node leads with a committed vote of its own.
    fn current(core: &Core) -> Option<Round> {
        let m = core.raft.metrics();
        let m = m.borrow();
        let leads = m.state == ServerState::Leader
            && m.current_leader == Some(core.id)
            && m.vote.is_committed()
            && m.vote.leader_id().voted_for() == Some(core.id);
        if !leads {
            return None;
        }
        let membership = m.membership_config.membership();
        let configs = membership.get_joint_config().clone();
        let targets = membership
            .voter_ids()
            .filter(|id| *id != core.id)
            .filter_map(|id| membership.get_node(&id).map(|n| (id, n.addr.clone())))
            .collect();
        Some(Round {
            vote: m.vote,
            configs,
            targets,
        })
    }
}

/// How one voter answered a round.
enum Answer {
    Accepted(NodeId),
    /// The voter knows a newer vote: this node no longer leads.
    HigherVote,
    /// No answer, a refusal for another reason, or a transport error.
    Nothing,
}

/// What one beat tells its voter besides the vote.
struct News {
    round: u64,
    renewed: Option<u64>,
    revocations: Vec<(u32, u64)>,
    suspects: Vec<NodeId>,
    table: (u32, u64),
}

/// Asks one voter to accept `vote` as its leader's.
async fn ask(core: &Core, target: NodeId, addr: &str, vote: Vote<NodeId>, news: News) -> Answer {
    let request = Request::Beat {
        target,
        rpc: AppendEntriesRequest {
            vote,
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        },
        round: news.round,
        renewed: news.renewed,
        revocations: news.revocations,
        suspects: news.suspects,
        table: news.table,
    };
    let timeout = core.config.timings.raft_heartbeat;
    match core.transport.call(addr, request, timeout).await {
        Ok(Response::AppendEntries(Ok(AppendEntriesResponse::HigherVote(_)))) => Answer::HigherVote,
        // A log conflict still means the voter accepted the vote (as in
        // openraft's own check); with no prev_log_id there is none anyway.
        Ok(Response::AppendEntries(Ok(_))) => Answer::Accepted(target),
        _ => Answer::Nothing,
    }
}

/// Renews the member session of voter `id`, which just accepted a beat, as
/// its own heartbeat would have: only while this node acts as leader in
/// office, and only a live session of a member.
fn renew_session(core: &Core, id: NodeId) -> bool {
    core.raft_leads()
        && core.in_office()
        && core.sm.read(|s| s.members.contains_key(&id))
        && core.touch_if_fresh(id)
}

/// Keeps [`Core::quorum_acked_at`] current and the voters' sessions renewed
/// while openraft says this node leads, one round every `raft_heartbeat`
/// (see the module docs).
pub(super) async fn track(core: Arc<Core>) {
    // Role changes only: Raft's full metrics are republished on every
    // message it handles.
    let mut server = core.raft.server_metrics();
    let period = core.config.timings.raft_heartbeat;
    let mut last_renewal: Option<Instant> = None;
    let mut round_no: u64 = 0;
    // Per voter, the latest round whose answer renewed its member session
    // and that the next beat to it has yet to confirm.
    let mut renewals: BTreeMap<NodeId, u64> = BTreeMap::new();
    loop {
        let Some(round) = Round::current(&core) else {
            last_renewal = None;
            renewals.clear();
            core.set_quorum_acked_at(None);
            tokio::select! {
                _ = core.shutdown.cancelled() => return,
                changed = server.changed() => if changed.is_err() { return },
            }
            continue;
        };
        let asked = Instant::now();
        core.vote_gate().begin_ask(asked);
        let mut granted = BTreeSet::from([core.id]);
        let mut ended = false;
        let mut end = |core: &Core, confirmed: bool| {
            let counted = core.vote_gate().end_ask(confirmed);
            if let Some(asked) = counted {
                core.set_quorum_acked_at(Some(asked));
                // Re-evaluating this node's grants on every round is wasted
                // work when idle: a quarter lease apart keeps the lease far
                // from running out, and a lapse of the quorum is noticed at
                // once (the owner task wakes when the lease would end).
                let renew_every = core.config.timings.lease / 4;
                if last_renewal.is_none_or(|t: Instant| asked.duration_since(t) >= renew_every) {
                    last_renewal = Some(asked);
                    core.ownership_changed.notify_one();
                }
            }
        };
        if is_joint_quorum(&round.configs, &granted) {
            end(&core, true);
            ended = true;
        }
        round_no += 1;
        let suspects: Vec<NodeId> = if renewals.is_empty() {
            Vec::new()
        } else {
            core.suspects().into_iter().collect()
        };
        // Read before the revocations below: a receiver whose table is at
        // least this new knows every revocation up to here, and the list
        // carries those still running.
        let table = core.sm.read(|s| (s.created_secs(), s.index));
        let mut answers: FuturesUnordered<_> = round
            .targets
            .iter()
            .map(|(id, addr)| {
                let renewed = renewals.remove(id);
                let news = News {
                    round: round_no,
                    renewed,
                    revocations: match renewed {
                        Some(_) => core.revocations_for(*id),
                        None => Vec::new(),
                    },
                    suspects: match renewed {
                        Some(_) => suspects.clone(),
                        None => Vec::new(),
                    },
                    table,
                };
                ask(&core, *id, addr, round.vote, news)
            })
            .collect();
        // Every call runs to its end (at most `raft_heartbeat`): dropping one
        // half-way would drop its pooled connection too.
        while let Some(answer) = tokio::select! {
            _ = core.shutdown.cancelled() => return,
            answer = answers.next() => answer,
        } {
            match answer {
                Answer::Accepted(id) => {
                    if renew_session(&core, id) {
                        renewals.insert(id, round_no);
                    }
                    granted.insert(id);
                    if !ended && is_joint_quorum(&round.configs, &granted) {
                        end(&core, true);
                        ended = true;
                    }
                }
                Answer::HigherVote => {
                    if !ended {
                        end(&core, false);
                        ended = true;
                    }
                    // openraft sends no heartbeats of its own here (the tick
                    // is held while it leads); one of them meets the newer
                    // vote and makes it step down.
                    let _ = core.raft.trigger().heartbeat().await;
                }
                Answer::Nothing => {}
            }
        }
        if !ended {
            end(&core, false);
        }
        tokio::select! {
            _ = core.shutdown.cancelled() => return,
            _ = crate::clock::sleep_until(asked + period) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn majority_of_one_configuration() {
        let c = vec![set(&[1, 2, 3])];
        assert!(!is_joint_quorum(&c, &set(&[1])));
        assert!(is_joint_quorum(&c, &set(&[1, 3])));
        assert!(is_joint_quorum(&c, &set(&[1, 2, 3, 9])));
        assert!(
            !is_joint_quorum(&c, &set(&[1, 9])),
            "outsiders do not count"
        );
        let even = vec![set(&[1, 2, 3, 4])];
        assert!(
            !is_joint_quorum(&even, &set(&[1, 2])),
            "half is not a majority"
        );
        assert!(is_joint_quorum(&even, &set(&[1, 2, 4])));
    }

    #[test]
    fn joint_needs_both() {
        let c = vec![set(&[1, 2, 3]), set(&[3, 4, 5])];
        assert!(!is_joint_quorum(&c, &set(&[1, 2])));
        assert!(!is_joint_quorum(&c, &set(&[4, 5])));
        assert!(is_joint_quorum(&c, &set(&[1, 3, 4])));
        assert!(!is_joint_quorum(&[], &set(&[1])));
    }

    proptest! {
        /// Any two quorums of the same configurations share a member of
        /// each configuration: the property Raft's safety rests on.
        #[test]
        fn two_quorums_intersect(
            configs in prop::collection::vec(prop::collection::btree_set(0u64..12, 1..7), 1..3),
            a in prop::collection::btree_set(0u64..12, 0..12),
            b in prop::collection::btree_set(0u64..12, 0..12),
        ) {
            if is_joint_quorum(&configs, &a) && is_joint_quorum(&configs, &b) {
                for c in &configs {
                    prop_assert!(c.iter().any(|id| a.contains(id) && b.contains(id)));
                }
            }
        }

        /// Adding a member never loses a quorum.
        #[test]
        fn monotone(
            configs in prop::collection::vec(prop::collection::btree_set(0u64..12, 1..7), 1..3),
            mut a in prop::collection::btree_set(0u64..12, 0..12),
            extra in 0u64..12,
        ) {
            let before = is_joint_quorum(&configs, &a);
            a.insert(extra);
            prop_assert!(!before || is_joint_quorum(&configs, &a));
        }
    }
}

//! The replicated cluster state and the pure function that advances it.
//!
//! Every change to the cluster is a [`Command`] committed in the Raft log at
//! some index. Voters apply commands from their state machine; members apply
//! the same commands from the stream the leader sends them. Both go through
//! [`ClusterState::apply`], which is deterministic and returns the events the
//! change produced, so every node tells the same story in the same order.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::partitions::{PartitionOp, PartitionTable};
use crate::token::make_token;
use crate::types::{LeaveReason, NodeId, NodeInfo, Role};

/// A change to the cluster state, as committed in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Stamps the cluster's identity. Only the first one ever applied counts.
    Init(ClusterIdentity),
    /// A newly elected leader announces itself; the entry's token is the
    /// leadership epoch.
    NewEpoch {
        /// The leader that proposed the entry.
        leader: NodeId,
    },
    /// Admits a node to the member table.
    AddMember {
        /// The node's id.
        id: NodeId,
        /// How to reach it.
        info: NodeInfo,
        /// Which start of the node was admitted (see
        /// [`crate::protocol::Request::Join`]).
        incarnation: u64,
    },
    /// Removes a node from the member table.
    RemoveMember {
        /// The node's id.
        id: NodeId,
        /// Why it is gone.
        reason: LeaveReason,
    },
    /// The Raft voter set changed (derived from Raft membership entries; never
    /// proposed directly).
    SetVoters(BTreeSet<NodeId>),
    /// A change to the partition table.
    Partitions(PartitionOp),
    /// An entry with no effect (Raft's blank entries).
    Noop,
}

/// What makes a cluster life unique, fixed when it is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    /// The cluster name every node must be configured with.
    pub name: String,
    /// Unix seconds at creation: the high half of every token (see [`crate::token`]).
    pub created_secs: u32,
    /// The number of partitions, fixed for the cluster's life.
    pub num_partitions: u32,
}

/// One row of the member table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// How to reach the member.
    pub info: NodeInfo,
    /// Voter or plain member.
    pub role: Role,
    /// Log index of the entry that admitted it.
    pub joined_index: u64,
    /// The token of that entry: every grant of its process is above it
    /// (see [`crate::ownership::grant_floor`]). Kept as a token, not
    /// recomputed, so it stays right when a recovery starts a new cluster
    /// life (`crate::raft::recover`).
    pub admitted: u64,
    /// Which start of the node was admitted (0 for a node without a data
    /// directory).
    pub incarnation: u64,
}

/// The committed cluster state as of log index [`ClusterState::index`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Identity of this cluster life, once initialised.
    pub identity: Option<ClusterIdentity>,
    /// The member table, ordered by id.
    pub members: BTreeMap<NodeId, Member>,
    /// The Raft voter set (may briefly name nodes not yet in the member table).
    pub voters: BTreeSet<NodeId>,
    /// The leader of the current epoch.
    pub leader: Option<NodeId>,
    /// The current leadership epoch (a token; 0 before the first leader).
    pub epoch: u64,
    /// The partition table (empty until `Init`).
    pub partitions: PartitionTable,
    /// Log index of the last applied entry (meaningful once `started`).
    pub index: u64,
    /// Whether any entry has been applied (Raft's first entry has index 0).
    pub started: bool,
}

impl ClusterState {
    /// The creation second of this cluster life (0 before `Init`).
    pub fn created_secs(&self) -> u32 {
        self.identity.as_ref().map_or(0, |i| i.created_secs)
    }

    /// Applies `command`, committed at `index`, and returns the events it caused.
    ///
    /// Entries at or below the current index were applied already and are
    /// ignored, so feeding the same entry from two sources is harmless.
    pub fn apply(&mut self, index: u64, command: &Command) -> Vec<Event> {
        if self.started && index <= self.index {
            return Vec::new();
        }
        self.started = true;
        self.index = index;
        let mut events = Vec::new();
        match command {
            Command::Init(identity) => {
                if self.identity.is_none() {
                    self.identity = Some(identity.clone());
                    self.partitions = PartitionTable::new(identity.num_partitions);
                }
            }
            Command::NewEpoch { leader } => {
                self.leader = Some(*leader);
                self.epoch = make_token(self.created_secs(), index);
                events.push(Event::LeaderChanged {
                    leader: *leader,
                    epoch: self.epoch,
                });
            }
            Command::AddMember {
                id,
                info,
                incarnation,
            } => {
                let role = self.role_of(*id);
                let previous = self.members.insert(
                    *id,
                    Member {
                        info: info.clone(),
                        role,
                        joined_index: index,
                        admitted: make_token(self.created_secs(), index),
                        incarnation: *incarnation,
                    },
                );
                if previous.is_none() {
                    events.push(Event::MemberJoined {
                        id: *id,
                        info: info.clone(),
                        role,
                    });
                }
            }
            Command::RemoveMember { id, reason } => {
                // The leader removes a member only once it can no longer act
                // on its partitions (it handed them off, or its lease ran out).
                self.partitions.release_node(*id);
                if let Some(member) = self.members.remove(id) {
                    events.push(Event::MemberLeft {
                        id: *id,
                        info: member.info,
                        reason: *reason,
                    });
                }
            }
            Command::SetVoters(voters) => {
                self.voters = voters.clone();
                for (id, member) in &mut self.members {
                    let role = if voters.contains(id) {
                        Role::Voter
                    } else {
                        Role::Member
                    };
                    if member.role != role {
                        member.role = role;
                        events.push(Event::RoleChanged { id: *id, role });
                    }
                }
            }
            Command::Partitions(op) => {
                let token = make_token(self.created_secs(), index);
                let members = self.members.keys().copied().collect();
                self.partitions.apply(token, op, &members);
            }
            Command::Noop => {}
        }
        events
    }

    /// The role `id` has under the current voter set.
    pub fn role_of(&self, id: NodeId) -> Role {
        if self.voters.contains(&id) {
            Role::Voter
        } else {
            Role::Member
        }
    }

    /// Replaces this state with `newer` (a snapshot) and returns the events
    /// that tell the difference, in the order a node would have seen them.
    ///
    /// A snapshot of an older index of the same cluster life is ignored; a
    /// snapshot from another cluster life always replaces.
    pub fn replace_with(&mut self, newer: ClusterState) -> Vec<Event> {
        let same_life = self.created_secs() == newer.created_secs() && self.identity.is_some();
        if same_life && self.started && newer.index <= self.index {
            return Vec::new();
        }
        let events = diff(self, &newer);
        *self = newer;
        events
    }
}

/// The events that turn `old` into `new`: departures, arrivals, role
/// changes, then the leader.
pub fn diff(old: &ClusterState, new: &ClusterState) -> Vec<Event> {
    let mut events = Vec::new();
    for (id, member) in &old.members {
        if !new.members.contains_key(id) {
            events.push(Event::MemberLeft {
                id: *id,
                info: member.info.clone(),
                // A snapshot does not say why; a member that vanished without
                // asking is reported as expired.
                reason: LeaveReason::Expired,
            });
        }
    }
    for (id, member) in &new.members {
        match old.members.get(id) {
            None => events.push(Event::MemberJoined {
                id: *id,
                info: member.info.clone(),
                role: member.role,
            }),
            Some(previous) if previous.role != member.role => events.push(Event::RoleChanged {
                id: *id,
                role: member.role,
            }),
            Some(_) => {}
        }
    }
    if let Some(leader) = new.leader {
        if (old.leader, old.epoch) != (new.leader, new.epoch) {
            events.push(Event::LeaderChanged {
                leader,
                epoch: new.epoch,
            });
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info(n: u64) -> NodeInfo {
        NodeInfo {
            name: format!("n{n}"),
            addr: format!("127.0.0.1:{}", 7000 + n),
            http_addr: None,
        }
    }

    fn init() -> Command {
        Command::Init(ClusterIdentity {
            name: "c".into(),
            created_secs: 7,
            num_partitions: 16,
        })
    }

    #[test]
    fn epoch_is_token_of_the_entry() {
        let mut s = ClusterState::default();
        s.apply(1, &init());
        let ev = s.apply(2, &Command::NewEpoch { leader: 9 });
        assert_eq!(s.epoch, make_token(7, 2));
        assert_eq!(
            ev,
            vec![Event::LeaderChanged {
                leader: 9,
                epoch: make_token(7, 2)
            }]
        );
    }

    #[test]
    fn stale_and_duplicate_entries_are_ignored() {
        let mut s = ClusterState::default();
        s.apply(1, &init());
        s.apply(
            2,
            &Command::AddMember {
                id: 1,
                info: info(1),
                incarnation: 0,
            },
        );
        assert!(
            s.apply(
                2,
                &Command::RemoveMember {
                    id: 1,
                    reason: LeaveReason::Left
                }
            )
            .is_empty()
        );
        assert!(s.members.contains_key(&1));
    }

    #[test]
    fn init_is_first_wins() {
        let mut s = ClusterState::default();
        s.apply(1, &init());
        s.apply(
            2,
            &Command::Init(ClusterIdentity {
                name: "other".into(),
                created_secs: 99,
                num_partitions: 1,
            }),
        );
        assert_eq!(s.created_secs(), 7);
    }

    #[test]
    fn voters_set_roles() {
        let mut s = ClusterState::default();
        s.apply(
            1,
            &Command::AddMember {
                id: 1,
                info: info(1),
                incarnation: 0,
            },
        );
        let ev = s.apply(2, &Command::SetVoters([1].into()));
        assert_eq!(s.members[&1].role, Role::Voter);
        assert_eq!(
            ev,
            vec![Event::RoleChanged {
                id: 1,
                role: Role::Voter
            }]
        );
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (0u64..6).prop_map(|leader| Command::NewEpoch { leader }),
            (0u64..6).prop_map(|id| Command::AddMember {
                id,
                info: info(id),
                incarnation: 0,
            }),
            (0u64..6).prop_map(|id| Command::RemoveMember {
                id,
                reason: LeaveReason::Expired
            }),
            proptest::collection::btree_set(0u64..6, 0..4).prop_map(Command::SetVoters),
            Just(Command::Noop),
        ]
    }

    proptest! {
        /// Applying a log one entry at a time and catching up from a snapshot
        /// end in the same state, and epochs never fall.
        #[test]
        fn snapshot_catch_up_matches_replay(cmds in proptest::collection::vec(arb_command(), 1..40), cut in 0usize..40) {
            let mut full = ClusterState::default();
            full.apply(1, &init());
            let mut last_epoch = 0;
            for (i, c) in cmds.iter().enumerate() {
                full.apply(i as u64 + 2, c);
                prop_assert!(full.epoch >= last_epoch);
                last_epoch = full.epoch;
            }
            let cut = cut.min(cmds.len());
            let mut partial = ClusterState::default();
            partial.apply(1, &init());
            for (i, c) in cmds.iter().take(cut).enumerate() {
                partial.apply(i as u64 + 2, c);
            }
            let mut lagging = partial.clone();
            lagging.replace_with(full.clone());
            prop_assert_eq!(&lagging, &full);
            // Replaying the rest onto the partial copy gives the same state too.
            for (i, c) in cmds.iter().enumerate().skip(cut) {
                partial.apply(i as u64 + 2, c);
            }
            prop_assert_eq!(&partial, &full);
        }
    }
}

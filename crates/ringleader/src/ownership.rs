//! What one node may act on: its valid grants, and the events that tell
//! its application when that changes. Pure: times are arguments.
//!
//! A node holds partition `p` (under token `t`) while all of these are true:
//! the committed table says `p` is owned or revoking by this node under `t`;
//! its lease is valid; and, when `p` is revoking, the revocation deadline has
//! not passed and the application has not released it. Events are well
//! formed: `Assigned` for a partition only when it is not held, `Revoking`
//! at most once per grant, and `Lost` whenever a held partition stops being
//! valid without the application having released it.

use std::collections::{BTreeMap, BTreeSet};

use crate::partitions::{PartitionTable, SlotState};
use crate::types::NodeId;

/// The token at or below which no grant in `state` to node `me` is this
/// process's (`incarnation`, see [`crate::protocol::Request::Join`]).
///
/// Every grant to a member follows the entry that admitted it, and the
/// leader readmits a restarted node only after taking back every partition
/// its earlier process held (`node::leader::readmit`, in one step with the
/// admission). So the grants of this process are exactly those above the
/// token of its own admission; a table whose row for `me` is another
/// process's (a copy restored from disk, older than the readmission), or
/// that has no row for it, shows none.
pub fn grant_floor(state: &crate::state::ClusterState, me: NodeId, incarnation: u64) -> u64 {
    match state.members.get(&me) {
        Some(m) if m.incarnation == incarnation => m.admitted,
        _ => u64::MAX,
    }
}

/// Partitions whose grant no process holds: the table names a member, but
/// under a token at or below that member's admission, so it was its earlier
/// process's (a restart from its data directory readmits the node under
/// the same id). The node never acts on them ([`grant_floor`]) and the
/// process that did is gone: the leader releases them at once.
pub fn orphaned(state: &crate::state::ClusterState) -> Vec<u32> {
    state
        .partitions
        .slots()
        .iter()
        .enumerate()
        .filter_map(|(p, slot)| {
            let member = state.members.get(&slot.owner?)?;
            (slot.token <= member.admitted).then(|| u32::try_from(p).unwrap_or(u32::MAX))
        })
        .collect()
}

/// A partition this node may act on, with its fencing token.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Grant {
    /// The partition.
    pub partition: u32,
    /// The fencing token of the grant: present it to downstream stores.
    pub token: u64,
}

/// A change in what the node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<T> {
    /// Newly held partitions.
    Assigned(Vec<Grant>),
    /// Held partitions the leader wants back, with the instant by which the
    /// application must have stopped (and should release them).
    Revoking(Vec<u32>, T),
    /// Partitions no longer held that the application did not release.
    Lost(Vec<u32>),
    /// Partitions granted to this node and revoked again before it ever
    /// held them (both arrived together, or while its lease was not valid):
    /// the application never started on them, so the node releases them
    /// itself. Not an application event.
    Unclaimed(Vec<Grant>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held<T> {
    token: u64,
    /// Set once the application has been told of the revocation.
    revoking_until: Option<T>,
}

/// The node's ownership tracker.
#[derive(Debug, Clone)]
pub struct Ownership<T> {
    me: NodeId,
    lease_until: Option<T>,
    held: BTreeMap<u32, Held<T>>,
    deadlines: BTreeMap<u32, T>,
    /// Grants at or below this token are not this process's (see
    /// [`Ownership::set_floor`]).
    floor: u64,
}

impl<T: Ord + Copy> Ownership<T> {
    /// Nothing held, no lease.
    pub fn new(me: NodeId) -> Self {
        Self {
            me,
            lease_until: None,
            held: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            floor: 0,
        }
    }

    /// From now on, grants with a token at or below `floor` are not this
    /// process's, whatever the table says (see [`grant_floor`]).
    pub fn set_floor(&mut self, floor: u64) {
        self.floor = floor;
    }

    /// The lease now runs until `until` (if that is later than before).
    pub fn renew(&mut self, until: T) {
        if self.lease_until.is_none_or(|u| u < until) {
            self.lease_until = Some(until);
        }
    }

    /// When the lease ends (`None`: never renewed).
    pub fn lease_until(&self) -> Option<T> {
        self.lease_until
    }

    /// The leader says revoking partition `p` may be worked on until `until`.
    pub fn revocation_deadline(&mut self, p: u32, until: T) {
        self.deadlines.insert(p, until);
    }

    /// The application released `parts` (acknowledging their revocation);
    /// returns those it held under a revocation, with their grant tokens.
    /// Partitions held but not being revoked are kept: releasing is the
    /// answer to a revocation, not a way to give work back.
    pub fn release(&mut self, parts: &[u32]) -> Vec<Grant> {
        let mut out = Vec::new();
        for p in parts {
            if let Some(h) = self.held.get(p).copied() {
                if h.revoking_until.is_some() {
                    self.held.remove(p);
                    self.deadlines.remove(p);
                    out.push(Grant {
                        partition: *p,
                        token: h.token,
                    });
                }
            }
        }
        out
    }

    /// Drops everything (the node stops or was expelled); returns what it held.
    pub fn lose_all(&mut self) -> Vec<u32> {
        self.lease_until = None;
        self.deadlines.clear();
        std::mem::take(&mut self.held).into_keys().collect()
    }

    /// The grants valid at `now`.
    pub fn valid(&self, now: T) -> Vec<Grant> {
        if self.lease_until.is_none_or(|u| now >= u) {
            return Vec::new();
        }
        self.held
            .iter()
            .filter(|(_, h)| h.revoking_until.is_none_or(|d| now < d))
            .map(|(p, h)| Grant {
                partition: *p,
                token: h.token,
            })
            .collect()
    }

    /// The next instant at which something held expires on its own.
    pub fn next_deadline(&self) -> Option<T> {
        if self.held.is_empty() {
            return None;
        }
        let revoking = self.held.values().filter_map(|h| h.revoking_until).min();
        match (self.lease_until, revoking) {
            (Some(l), Some(r)) => Some(l.min(r)),
            (l, r) => l.or(r),
        }
    }

    /// Brings the held set in line with `table` at `now`, returning what
    /// changed in the order the application must hear it: losses first,
    /// then revocations, then new grants.
    pub fn evaluate(&mut self, table: &PartitionTable, now: T) -> Vec<Change<T>> {
        let lease_ok = self.lease_until.is_some_and(|u| now < u);
        let mine: BTreeMap<u32, (SlotState, u64)> = table
            .slots()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.owner == Some(self.me))
            .map(|(p, s)| (u32::try_from(p).unwrap_or(u32::MAX), (s.state, s.token)))
            .filter(|(_, (_, token))| *token > self.floor)
            .collect();

        // Revoking partitions get a deadline when first seen: no later than
        // the current lease, unless the leader already said more.
        for (p, (state, _)) in &mine {
            if *state == SlotState::Revoking && !self.deadlines.contains_key(p) {
                if let Some(lease) = self.lease_until {
                    self.deadlines.insert(*p, lease);
                }
            }
        }

        let mut lost = Vec::new();
        for (p, h) in &self.held {
            let still = match mine.get(p) {
                Some((SlotState::Owned, token)) => *token == h.token,
                Some((SlotState::Revoking, token)) => {
                    *token == h.token && self.deadlines.get(p).is_some_and(|d| now < *d)
                }
                _ => false,
            };
            if !lease_ok || !still {
                lost.push(*p);
            }
        }
        for p in &lost {
            self.held.remove(p);
        }

        let mut revoking = Vec::new();
        let mut earliest: Option<T> = None;
        for (p, h) in self.held.iter_mut() {
            if h.revoking_until.is_none()
                && mine.get(p).is_some_and(|(s, _)| *s == SlotState::Revoking)
            {
                if let Some(d) = self.deadlines.get(p).copied() {
                    h.revoking_until = Some(d);
                    revoking.push(*p);
                    earliest = Some(earliest.map_or(d, |e: T| e.min(d)));
                }
            } else if let (Some(_), Some(d)) = (h.revoking_until, self.deadlines.get(p)) {
                // The leader may extend the deadline; never beyond what it said.
                h.revoking_until = Some(*d);
            }
        }

        let mut assigned = Vec::new();
        if lease_ok {
            for (p, (state, token)) in &mine {
                if *state == SlotState::Owned && !self.held.contains_key(p) {
                    self.held.insert(
                        *p,
                        Held {
                            token: *token,
                            revoking_until: None,
                        },
                    );
                    assigned.push(Grant {
                        partition: *p,
                        token: *token,
                    });
                }
            }
        }

        let unclaimed: Vec<Grant> = mine
            .iter()
            .filter(|(p, (state, _))| *state == SlotState::Revoking && !self.held.contains_key(p))
            .map(|(p, (_, token))| Grant {
                partition: *p,
                token: *token,
            })
            .collect();

        let held: BTreeSet<u32> = self.held.keys().copied().collect();
        self.deadlines
            .retain(|p, _| held.contains(p) || mine.contains_key(p));

        let mut out = Vec::new();
        if !lost.is_empty() {
            out.push(Change::Lost(lost));
        }
        if let (false, Some(d)) = (revoking.is_empty(), earliest) {
            out.push(Change::Revoking(revoking, d));
        }
        if !assigned.is_empty() {
            out.push(Change::Assigned(assigned));
        }
        if !unclaimed.is_empty() {
            out.push(Change::Unclaimed(unclaimed));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partitions::PartitionOp;
    use proptest::prelude::*;

    const ME: u64 = 1;

    fn table_with(grants: &[(u32, u64)], index: u64) -> PartitionTable {
        let mut t = PartitionTable::new(4);
        let m: BTreeSet<u64> = [1, 2].into();
        t.apply(index, &PartitionOp::Grant(grants.to_vec()), &m);
        t
    }

    #[test]
    fn nothing_is_held_without_a_lease() {
        let t = table_with(&[(0, ME)], 5);
        let mut o = Ownership::<u64>::new(ME);
        assert!(o.evaluate(&t, 0).is_empty());
        o.renew(100);
        assert_eq!(
            o.evaluate(&t, 10),
            vec![Change::Assigned(vec![Grant {
                partition: 0,
                token: 5
            }])]
        );
        assert_eq!(o.valid(10).len(), 1);
        assert!(o.valid(100).is_empty());
        assert_eq!(o.evaluate(&t, 100), vec![Change::Lost(vec![0])]);
    }

    #[test]
    fn grants_at_or_below_the_floor_are_never_held() {
        let t = table_with(&[(0, ME)], 5);
        let mut o = Ownership::<u64>::new(ME);
        o.renew(100);
        o.set_floor(5);
        assert!(o.evaluate(&t, 10).is_empty());
        // Taken back and granted again after the admission: held.
        let regranted = table_with(&[(0, ME)], 9);
        assert_eq!(
            o.evaluate(&regranted, 20),
            vec![Change::Assigned(vec![Grant {
                partition: 0,
                token: 9
            }])]
        );
        // A table whose row for this node is another process's: nothing.
        o.set_floor(u64::MAX);
        assert_eq!(o.evaluate(&regranted, 30), vec![Change::Lost(vec![0])]);
    }

    #[test]
    fn grants_from_before_a_readmission_are_orphans() {
        use crate::state::{ClusterState, Command};
        use crate::types::NodeInfo;
        let mut state = ClusterState::default();
        let add = |incarnation| Command::AddMember {
            id: ME,
            info: NodeInfo::default(),
            incarnation,
        };
        state.apply(
            1,
            &Command::Init(crate::state::ClusterIdentity {
                name: "c".into(),
                created_secs: 0,
                num_partitions: 4,
            }),
        );
        state.apply(2, &add(1));
        state.apply(
            3,
            &Command::Partitions(PartitionOp::Grant(vec![(0, ME), (1, ME)])),
        );
        assert!(orphaned(&state).is_empty(), "this process's grants");
        state.apply(4, &add(2));
        assert_eq!(
            orphaned(&state),
            vec![0, 1],
            "granted before the readmission"
        );
        state.apply(5, &Command::Partitions(PartitionOp::Release(vec![0, 1])));
        state.apply(6, &Command::Partitions(PartitionOp::Grant(vec![(0, ME)])));
        assert!(orphaned(&state).is_empty());
    }

    #[test]
    fn the_floor_is_this_processs_admission() {
        use crate::state::{ClusterState, Member};
        use crate::types::{NodeInfo, Role};
        let mut state = ClusterState::default();
        assert_eq!(grant_floor(&state, ME, 2), u64::MAX, "not a member");
        let row = |incarnation| Member {
            info: NodeInfo::default(),
            role: Role::Member,
            joined_index: 7,
            admitted: 7,
            incarnation,
        };
        state.members.insert(ME, row(1));
        assert_eq!(
            grant_floor(&state, ME, 2),
            u64::MAX,
            "an earlier process's row"
        );
        state.members.insert(ME, row(2));
        assert_eq!(grant_floor(&state, ME, 2), 7);
    }

    #[test]
    fn revocation_then_release_is_quiet() {
        let mut t = table_with(&[(0, ME), (1, ME)], 5);
        let m: BTreeSet<u64> = [1, 2].into();
        let mut o = Ownership::<u64>::new(ME);
        o.renew(100);
        o.evaluate(&t, 0);
        t.apply(6, &PartitionOp::Revoke(vec![0]), &m);
        o.revocation_deadline(0, 80);
        assert_eq!(o.evaluate(&t, 1), vec![Change::Revoking(vec![0], 80)]);
        assert_eq!(o.release(&[1]), vec![], "not being revoked: kept");
        assert_eq!(
            o.release(&[0]),
            vec![Grant {
                partition: 0,
                token: 5
            }]
        );
        t.apply(7, &PartitionOp::Release(vec![0]), &m);
        assert!(o.evaluate(&t, 2).is_empty());
        assert_eq!(
            o.valid(2),
            vec![Grant {
                partition: 1,
                token: 5
            }]
        );
    }

    #[test]
    fn unreleased_revocation_is_lost_at_the_deadline() {
        let mut t = table_with(&[(0, ME)], 5);
        let m: BTreeSet<u64> = [1, 2].into();
        let mut o = Ownership::<u64>::new(ME);
        o.renew(1000);
        o.evaluate(&t, 0);
        t.apply(6, &PartitionOp::Revoke(vec![0]), &m);
        o.revocation_deadline(0, 50);
        o.evaluate(&t, 1);
        assert_eq!(o.next_deadline(), Some(50));
        assert!(o.valid(50).is_empty());
        // Lost to the application; and, since it has stopped, released.
        assert_eq!(
            o.evaluate(&t, 50),
            vec![
                Change::Lost(vec![0]),
                Change::Unclaimed(vec![Grant {
                    partition: 0,
                    token: 5
                }])
            ]
        );
    }

    #[test]
    fn revocation_seen_before_the_leader_speaks_ends_with_the_lease() {
        let mut t = table_with(&[(0, ME)], 5);
        let m: BTreeSet<u64> = [1, 2].into();
        let mut o = Ownership::<u64>::new(ME);
        o.renew(40);
        o.evaluate(&t, 0);
        t.apply(6, &PartitionOp::Revoke(vec![0]), &m);
        assert_eq!(o.evaluate(&t, 1), vec![Change::Revoking(vec![0], 40)]);
        o.renew(90); // a later heartbeat renews the lease but not the revocation
        assert!(o.valid(45).is_empty());
    }

    #[derive(Debug, Clone)]
    enum Step {
        Renew(u64),
        Grant(u32, u64),
        Revoke(u32),
        Deadline(u32, u64),
        Release(u32),
        LeaderRelease(u32),
        Tick(u64),
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u64..50).prop_map(Step::Renew),
            (0u32..4, 1u64..3).prop_map(|(p, n)| Step::Grant(p, n)),
            (0u32..4).prop_map(Step::Revoke),
            (0u32..4, 1u64..50).prop_map(|(p, d)| Step::Deadline(p, d)),
            (0u32..4).prop_map(Step::Release),
            (0u32..4).prop_map(Step::LeaderRelease),
            (1u64..20).prop_map(Step::Tick),
        ]
    }

    proptest! {
        /// Event streams are well formed and `valid` agrees with them: a
        /// partition is assigned only when not held, revoked at most once per
        /// grant, lost only when held, and nothing is valid after the lease.
        #[test]
        fn events_are_well_formed(steps in proptest::collection::vec(arb_step(), 0..80)) {
            let m: BTreeSet<u64> = [1, 2].into();
            let mut t = PartitionTable::new(4);
            let mut o = Ownership::<u64>::new(ME);
            let mut now = 0u64;
            let mut index = 1u64;
            let mut held: BTreeSet<u32> = BTreeSet::new();
            let mut revoked: BTreeSet<u32> = BTreeSet::new();
            let mut lease = 0u64;
            for step in steps {
                index += 1;
                match step {
                    Step::Renew(d) => { lease = lease.max(now + d); o.renew(now + d); }
                    Step::Grant(p, n) => { t.apply(index, &PartitionOp::Grant(vec![(p, n)]), &m); }
                    Step::Revoke(p) => { t.apply(index, &PartitionOp::Revoke(vec![p]), &m); }
                    Step::Deadline(p, d) => o.revocation_deadline(p, now + d),
                    Step::Release(p) => {
                        for r in o.release(&[p]) {
                            prop_assert!(revoked.contains(&r.partition), "released without a revocation");
                            held.remove(&r.partition);
                            revoked.remove(&r.partition);
                        }
                    }
                    Step::LeaderRelease(p) => { t.apply(index, &PartitionOp::Release(vec![p]), &m); }
                    Step::Tick(d) => now += d,
                }
                for change in o.evaluate(&t, now) {
                    match change {
                        Change::Assigned(gs) => for g in gs {
                            prop_assert!(held.insert(g.partition), "assigned twice: {}", g.partition);
                            prop_assert!(now < lease);
                        },
                        Change::Revoking(ps, _) => for p in ps {
                            prop_assert!(held.contains(&p));
                            prop_assert!(revoked.insert(p), "revoking twice: {p}");
                        },
                        Change::Lost(ps) => for p in ps {
                            prop_assert!(held.remove(&p), "lost while not held: {p}");
                            revoked.remove(&p);
                        },
                        Change::Unclaimed(gs) => for g in gs {
                            prop_assert!(!held.contains(&g.partition), "unclaimed while held");
                            let slot = t.slot(g.partition).unwrap();
                            prop_assert_eq!(slot.owner, Some(ME));
                            prop_assert_eq!(slot.state, SlotState::Revoking);
                            prop_assert_eq!(slot.token, g.token);
                        },
                    }
                }
                let valid: BTreeSet<u32> = o.valid(now).iter().map(|g| g.partition).collect();
                prop_assert!(valid.is_subset(&held));
                if now >= lease { prop_assert!(valid.is_empty()); }
                for g in o.valid(now) {
                    let slot = t.slot(g.partition).unwrap();
                    prop_assert_eq!(slot.owner, Some(ME));
                    prop_assert_eq!(slot.token, g.token);
                }
            }
        }
    }
}

//! Deterministic partition → node assignment.
//!
//! [`assign`] is a pure function: given the set of live member node ids and
//! the current owner table (one entry per partition), it returns the new
//! owner table. It does no I/O, reads no clock, uses no randomness and does
//! not depend on hash-map iteration order, so every node that runs it on the
//! same input computes the same output.
//!
//! # Guarantees
//!
//! Let `P` be the number of partitions (the table length) and `N` the number
//! of live members, `N > 0`. Owners that are not live members (crashed or
//! departed nodes) are treated exactly like `None` (unassigned).
//!
//! * **Complete**: every partition gets a live owner. With no live members
//!   every entry is `None`.
//! * **Balanced**: every live node owns `floor(P/N)` or `ceil(P/N)`
//!   partitions, so counts differ by at most one. When `N > P`, `P` nodes own
//!   one partition each and the rest own none.
//! * **Sticky**: every live node keeps the partitions it already owns, up to
//!   its quota. A partition whose owner is still live only moves if that owner
//!   is over quota. Consequently:
//!   * when one node joins a balanced table of `n` nodes, at most
//!     `ceil(P/(n+1))` partitions change owner (all of them to the new node);
//!   * when a node leaves or crashes from a balanced table, exactly the
//!     partitions it held change owner.
//! * **Minimal movement**: which nodes get the larger quota is chosen so that
//!   the number of partitions taken away from live owners is as small as
//!   possible (see step 2 below).
//! * **Deterministic**: the output depends only on the input.
//!
//! # Algorithm
//!
//! Let `base = P / N` and `extra = P % N` (integer division).
//!
//! 1. **Current holdings.** For every live node, collect the partitions it
//!    currently owns. Partitions owned by `None` or by a non-member are
//!    *free*.
//! 2. **Quotas.** Sort the live nodes by number of currently held partitions,
//!    descending, ties broken by node id ascending. The first `extra` nodes in
//!    that order get quota `base + 1`, the others `base`. Giving the extra
//!    slots to the nodes that hold the most means they don't have to give
//!    anything up for it.
//! 3. **Keep.** A node holding at most its quota keeps everything. A node
//!    holding more keeps the `quota` partitions with the highest
//!    [`rendezvous_score`] for that node (ties, which cannot actually occur,
//!    go to the lower partition number) and releases the rest; released
//!    partitions become free.
//! 4. **Place.** Visit the free partitions in ascending partition order. Give
//!    each one to the node with the highest [`rendezvous_score`] for that
//!    partition among the nodes still below their quota (ties, which cannot
//!    actually occur, go to the lower node id). A node that reaches its quota
//!    stops being a candidate.
//!
//! The number of free partitions equals the total unfilled quota, so step 4
//! always fills every partition and every node ends exactly at its quota.
//!
//! # Rendezvous score
//!
//! The score of node `n` (a `u64`) for partition `p` is a splitmix64-style
//! mix, computed with wrapping (mod 2^64) unsigned 64-bit arithmetic:
//!
//! ```text
//! splitmix64(x) = z3 where
//!     z0 = x + 0x9E3779B97F4A7C15
//!     z1 = (z0 ^ (z0 >> 30)) * 0xBF58476D1CE4E5B9
//!     z2 = (z1 ^ (z1 >> 27)) * 0x94D049BB133111EB
//!     z3 =  z2 ^ (z2 >> 31)
//! score(p, n) = splitmix64(splitmix64(n) ^ p)
//! ```
//!
//! `splitmix64(x)` is the first output of the SplitMix64 generator seeded with
//! `x`. It was chosen over xxh64 of the (partition, node) bytes because it is
//! several times cheaper, which matters for step 4. Because `splitmix64` is a
//! bijection, two different nodes never get the same score for one partition,
//! and one node never gets the same score for two partitions.
//!
//! # Complexity
//!
//! With `F` free partitions and `U` under-quota nodes, a call costs
//! `O(P log N + N log N + R log R + F·U)` time (`R` = number of partitions
//! released in step 3) and `O(P + N)` space. For a single join or leave on a
//! balanced table `F·U` is about `P`. The worst case is the first assignment
//! (or a wholesale membership change), where `F·U` is up to `P·N` score
//! evaluations: for `P = 4096`, `N = 1000` that is about 4 million cheap mixes,
//! a few milliseconds in a release build. Exact "highest score among the
//! eligible nodes" needs every eligible node's score, so that term can't be
//! avoided without weakening the placement rule.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One change between two owner tables, as reported by [`moves`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The partition whose owner changed.
    pub partition: u32,
    /// The previous owner (`None` if the partition was unassigned).
    pub from: Option<u64>,
    /// The new owner (`None` if the partition is now unassigned).
    pub to: Option<u64>,
}

/// The rendezvous (highest-random-weight) score of `node` for `partition`:
/// `splitmix64(splitmix64(node) ^ partition)`, as specified in the
/// [module documentation](self).
///
/// [`assign`] hands a free partition to the eligible node with the highest
/// score, and an over-quota node keeps its highest-scoring partitions.
#[must_use]
pub fn rendezvous_score(partition: u32, node: u64) -> u64 {
    score(node_hash(node), u64::from(partition))
}

/// Computes the new owner table for the live `members` given the `current`
/// owner table.
///
/// `current[p]` is the owner of partition `p` (`None` = unassigned); the
/// table's length is the partition count `P`. Owners that are not in
/// `members` are treated as unassigned. The result has length `P`; every
/// entry is `Some(live member)` when `members` is non-empty, and every entry
/// is `None` when it is empty.
///
/// See the [module documentation](self) for the rules the result satisfies,
/// the exact algorithm and its complexity.
#[must_use]
pub fn assign(members: &BTreeSet<u64>, current: &[Option<u64>]) -> Vec<Option<u64>> {
    let num_partitions = current.len();
    let mut next: Vec<Option<u64>> = vec![None; num_partitions];
    // Ascending node ids; a node's index in this Vec is its index everywhere below.
    let nodes: Vec<u64> = members.iter().copied().collect();
    let n = nodes.len();
    if n == 0 {
        return next;
    }

    // Step 1: partitions currently held by each live node (ascending).
    let mut held: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (p, owner) in current.iter().enumerate() {
        if let Some(i) = owner.and_then(|o| nodes.binary_search(&o).ok()) {
            held[i].push(p);
        }
    }

    // Step 2: quotas. `sort_by_key` is stable and indices are in ascending id
    // order, so equal holdings are ordered by node id ascending.
    let base = num_partitions / n;
    let extra = num_partitions % n;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| Reverse(held[i].len()));
    let mut quota = vec![base; n];
    for &i in order.iter().take(extra) {
        quota[i] += 1;
    }

    // Step 3: keep up to quota, preferring the node's highest-scoring partitions.
    let mut candidates: Vec<Candidate> = Vec::new();
    for (i, (&node, mut mine)) in nodes.iter().zip(held).enumerate() {
        let hash = node_hash(node);
        if mine.len() > quota[i] {
            mine.sort_by_cached_key(|&p| (Reverse(score(hash, p as u64)), p));
            mine.truncate(quota[i]);
        }
        for &p in &mine {
            next[p] = Some(node);
        }
        let remaining = quota[i] - mine.len();
        if remaining > 0 {
            candidates.push(Candidate {
                hash,
                node,
                remaining,
            });
        }
    }

    // Step 4: place free partitions, in ascending order, on the eligible node
    // with the highest score. The candidates' order is irrelevant because the
    // comparison is a total order on (score, node id).
    for (p, slot) in next.iter_mut().enumerate() {
        if slot.is_some() {
            continue;
        }
        let p = p as u64;
        let mut best: Option<(usize, u64, u64)> = None; // (index, score, node)
        for (k, c) in candidates.iter().enumerate() {
            let s = score(c.hash, p);
            if best.is_none_or(|(_, bs, bn)| s > bs || (s == bs && c.node < bn)) {
                best = Some((k, s, c.node));
            }
        }
        // Free partitions == total unfilled quota, so a candidate always
        // exists here; if not, the slot would stay `None` rather than panic.
        let Some((k, _, node)) = best else { break };
        *slot = Some(node);
        candidates[k].remaining -= 1;
        if candidates[k].remaining == 0 {
            candidates.swap_remove(k);
        }
    }

    next
}

/// Lists the partitions whose owner differs between `old` and `new`, in
/// ascending partition order.
///
/// Every differing entry is reported, including a change from a dead owner to
/// a live one. If the tables have different lengths, missing entries count
/// as `None`. Tables are indexed by `u32` partition numbers; entries beyond
/// index `u32::MAX` are ignored.
#[must_use]
pub fn moves(old: &[Option<u64>], new: &[Option<u64>]) -> Vec<Move> {
    let len = old.len().max(new.len());
    (0..len)
        .zip(0u32..)
        .filter_map(|(i, partition)| {
            let from = old.get(i).copied().flatten();
            let to = new.get(i).copied().flatten();
            (from != to).then_some(Move {
                partition,
                from,
                to,
            })
        })
        .collect()
}

/// Counts the partitions each node owns in `table`.
///
/// Only nodes that own at least one partition appear in the result;
/// unassigned (`None`) entries are not counted.
#[must_use]
pub fn counts(table: &[Option<u64>]) -> BTreeMap<u64, u32> {
    let mut out = BTreeMap::new();
    for owner in table.iter().flatten() {
        let c: &mut u32 = out.entry(*owner).or_default();
        *c = c.saturating_add(1);
    }
    out
}

/// A node that is still below its quota during step 4 of [`assign`].
struct Candidate {
    /// `node_hash(node)`, precomputed.
    hash: u64,
    node: u64,
    /// Partitions still needed to reach the quota; always > 0 while listed.
    remaining: usize,
}

/// The first output of SplitMix64 seeded with `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The per-node half of the rendezvous score.
fn node_hash(node: u64) -> u64 {
    splitmix64(node)
}

/// `score(node_hash(n), p)` is the rendezvous score of node `n` for partition `p`.
fn score(node_hash: u64, partition: u64) -> u64 {
    splitmix64(node_hash ^ partition)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    // ----- helpers ---------------------------------------------------------

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn score_of(p: usize, n: u64) -> u64 {
        rendezvous_score(u32::try_from(p).expect("small P"), n)
    }

    /// Live-owner counts of `table` for every member (including zeros).
    fn live_counts(members: &BTreeSet<u64>, table: &[Option<u64>]) -> BTreeMap<u64, usize> {
        let mut c: BTreeMap<u64, usize> = members.iter().map(|&m| (m, 0)).collect();
        for owner in table.iter().flatten() {
            if let Some(v) = c.get_mut(owner) {
                *v += 1;
            }
        }
        c
    }

    /// True if `table` is a complete, balanced table for `members` (or all
    /// `None` with no members).
    fn is_balanced(members: &BTreeSet<u64>, table: &[Option<u64>]) -> bool {
        if members.is_empty() {
            return table.iter().all(Option::is_none);
        }
        let p = table.len();
        let n = members.len();
        table
            .iter()
            .all(|o| o.is_some_and(|o| members.contains(&o)))
            && live_counts(members, table)
                .values()
                .all(|&c| c == p / n || c == p.div_ceil(n))
    }

    /// Checks every general rule for `new = assign(members, old)`.
    fn check_rules(
        members: &BTreeSet<u64>,
        old: &[Option<u64>],
        new: &[Option<u64>],
    ) -> Result<(), TestCaseError> {
        let p = old.len();
        prop_assert_eq!(new.len(), p);

        // (d) deterministic.
        prop_assert_eq!(&assign(members, old), new);
        // Non-member owners are the same as unassigned.
        let cleaned: Vec<Option<u64>> = old
            .iter()
            .map(|o| o.filter(|o| members.contains(o)))
            .collect();
        prop_assert_eq!(&assign(members, &cleaned), new);

        if members.is_empty() {
            prop_assert!(new.iter().all(Option::is_none));
            return Ok(());
        }
        prop_assert!(
            new.iter().all(|o| o.is_some_and(|o| members.contains(&o))),
            "every partition must have a live owner"
        );

        let n = members.len();
        let base = p / n;
        let extra = p % n;
        let before = live_counts(members, old);
        let after = live_counts(members, new);

        // (a) balance: counts are floor or ceil, exactly `extra` nodes at base+1.
        for (&node, &c) in &after {
            prop_assert!(
                c == base || c == base + 1,
                "node {} owns {} (P={}, N={})",
                node,
                c,
                p,
                n
            );
        }
        prop_assert_eq!(after.values().filter(|&&c| c == base + 1).count(), extra);

        // Quota choice: the extra slots go to the nodes holding the most,
        // ties by lower node id.
        let mut order: Vec<(Reverse<usize>, u64)> =
            before.iter().map(|(&m, &c)| (Reverse(c), m)).collect();
        order.sort();
        for (rank, &(_, m)) in order.iter().enumerate() {
            let expected = if rank < extra { base + 1 } else { base };
            prop_assert_eq!(after[&m], expected, "quota of node {}", m);
        }

        // (b) stickiness: each node keeps min(held, quota) of its partitions.
        let mut kept: BTreeMap<u64, usize> = members.iter().map(|&m| (m, 0)).collect();
        for (o, nw) in old.iter().zip(new) {
            if let Some(o) = o.filter(|o| Some(*o) == *nw) {
                *kept.entry(o).or_default() += 1;
            }
        }
        for &m in members {
            prop_assert_eq!(kept[&m], before[&m].min(after[&m]), "kept by node {}", m);
        }

        // Minimal movement, computed independently of the quota ordering:
        // every node must shed its excess over `base`, except that up to
        // `extra` of the nodes above `base` may keep one more.
        let moved_from_live = old
            .iter()
            .zip(new)
            .filter(|(o, nw)| o.is_some_and(|o| members.contains(&o)) && o != nw)
            .count();
        let excess: usize = before.values().map(|&c| c.saturating_sub(base)).sum();
        let above = before.values().filter(|&&c| c > base).count();
        prop_assert_eq!(moved_from_live, excess - extra.min(above));

        // Keep rule: an over-quota node keeps its highest-scoring partitions.
        for &m in members {
            if before[&m] <= after[&m] {
                continue;
            }
            let mut min_kept = u64::MAX;
            let mut max_released = 0u64;
            for (i, (o, nw)) in old.iter().zip(new).enumerate() {
                if *o == Some(m) {
                    let s = score_of(i, m);
                    if *nw == Some(m) {
                        min_kept = min_kept.min(s);
                    } else {
                        max_released = max_released.max(s);
                    }
                }
            }
            prop_assert!(min_kept > max_released, "node {} kept the wrong ones", m);
        }

        // (e) placement: visiting placed partitions in ascending order, each
        // went to the under-quota node with the highest score.
        let mut fill = kept.clone();
        for (i, (o, nw)) in old.iter().zip(new).enumerate() {
            let Some(to) = *nw else { continue };
            if *o == Some(to) {
                continue; // kept, not placed
            }
            let to_key = (score_of(i, to), Reverse(to));
            for (&m, &f) in &fill {
                if f < after[&m] && m != to {
                    prop_assert!(
                        (score_of(i, m), Reverse(m)) < to_key,
                        "partition {} went to {} but under-quota {} scores higher",
                        i,
                        to,
                        m
                    );
                }
            }
            prop_assert!(fill[&to] < after[&to]);
            *fill.entry(to).or_default() += 1;
        }
        Ok(())
    }

    // ----- example tests ---------------------------------------------------

    #[test]
    fn ten_partitions_three_nodes() {
        let new = assign(&set(&[1, 2, 3]), &[None; 10]);
        let c = counts(&new);
        // Nobody holds anything yet, so the extra slot goes to the lowest id.
        assert_eq!(c, BTreeMap::from([(1, 4), (2, 3), (3, 3)]));
    }

    #[test]
    fn extra_slot_goes_to_the_node_that_holds_more() {
        // Node 3 holds 4 of 10 partitions already; with three nodes it keeps 4.
        let mut old = vec![Some(3); 4];
        old.extend([None; 6]);
        let new = assign(&set(&[1, 2, 3]), &old);
        assert_eq!(counts(&new), BTreeMap::from([(1, 3), (2, 3), (3, 4)]));
        assert_eq!(&new[..4], &old[..4]);
    }

    #[test]
    fn single_node_owns_everything() {
        let old = vec![Some(9), None, Some(7), None];
        let new = assign(&set(&[7]), &old);
        assert_eq!(new, vec![Some(7); 4]);
    }

    #[test]
    fn no_members_means_unassigned() {
        let old = vec![Some(1), Some(2), None];
        assert_eq!(assign(&BTreeSet::new(), &old), vec![None; 3]);
    }

    #[test]
    fn zero_partitions() {
        assert!(assign(&set(&[1, 2]), &[]).is_empty());
        assert!(moves(&[], &[]).is_empty());
        assert!(counts(&[]).is_empty());
    }

    #[test]
    fn more_nodes_than_partitions() {
        let members = set(&[10, 20, 30, 40, 50]);
        let new = assign(&members, &[None; 3]);
        let c = counts(&new);
        assert_eq!(c.len(), 3);
        assert!(c.values().all(|&v| v == 1));
        // A sixth node joining takes nothing.
        let mut bigger = members.clone();
        bigger.insert(60);
        assert_eq!(assign(&bigger, &new), new);
        // An owner leaving hands its partition to an idle node.
        let gone = new[0].expect("assigned");
        let mut smaller = members.clone();
        smaller.remove(&gone);
        let after = assign(&smaller, &new);
        assert_eq!(moves(&new, &after).len(), 1);
        assert_ne!(after[0], Some(gone));
        assert_eq!(&after[1..], &new[1..]);
    }

    #[test]
    fn join_and_leave_examples() {
        let three = assign(&set(&[1, 2, 3]), &[None; 10]);
        let four = assign(&set(&[1, 2, 3, 4]), &three);
        let ms = moves(&three, &four);
        assert!(ms.len() <= 3, "{ms:?}");
        assert!(ms.iter().all(|m| m.to == Some(4)));
        assert_eq!(
            counts(&four).values().copied().collect::<Vec<_>>(),
            [3, 3, 2, 2]
        );

        let back = assign(&set(&[1, 2, 4]), &four);
        for m in moves(&four, &back) {
            assert_eq!(m.from, Some(3), "{m:?}");
        }
    }

    #[test]
    fn unchanged_membership_is_a_no_op() {
        let members = set(&[5, 6, 7, 8]);
        let t = assign(&members, &[None; 37]);
        assert_eq!(assign(&members, &t), t);
    }

    #[test]
    fn large_assignment_is_balanced() {
        let members: BTreeSet<u64> = (0..1000u64).map(|i| i * 7919 + 13).collect();
        let t = assign(&members, &vec![None; 4096]);
        let c = counts(&t);
        assert_eq!(c.len(), 1000);
        assert!(c.values().all(|&v| v == 4 || v == 5));
        assert_eq!(c.values().filter(|&&v| v == 5).count(), 96);
    }

    #[test]
    fn moves_and_counts() {
        let old = [Some(1), Some(2), None, Some(3)];
        let new = [Some(1), Some(3), Some(2)];
        assert_eq!(
            moves(&old, &new),
            vec![
                Move {
                    partition: 1,
                    from: Some(2),
                    to: Some(3)
                },
                Move {
                    partition: 2,
                    from: None,
                    to: Some(2)
                },
                Move {
                    partition: 3,
                    from: Some(3),
                    to: None
                },
            ]
        );
        assert_eq!(counts(&old), BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
        assert_eq!(counts(&[Some(4), None, Some(4)]), BTreeMap::from([(4, 2)]));
    }

    #[test]
    fn move_is_serde() {
        fn is_serde<T: Serialize + for<'de> Deserialize<'de>>() {}
        is_serde::<Move>();
    }

    #[test]
    fn rendezvous_score_reference_values() {
        // Computed independently (Python, plain integer arithmetic mod 2^64).
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rendezvous_score(0, 0), 0xa706_dd2f_4d19_7e6f);
        assert_eq!(rendezvous_score(1, 42), 0xf34f_e924_8c93_42e5);
        assert_eq!(rendezvous_score(4095, u64::MAX), 0x64f5_8837_e18f_ea11);
        assert_eq!(rendezvous_score(u32::MAX, 1), 0xbab7_17b1_abb4_d77a);
    }

    // ----- property tests --------------------------------------------------

    #[derive(Debug, Clone)]
    enum Op {
        /// A node joins (no-op if already a member or at the size cap).
        Join(u64),
        /// A member leaves gracefully: its entries are cleared first.
        Leave(Index),
        /// A member crashes: the table still names it as owner.
        Crash(Index),
        /// Several nodes join and several leave at once.
        Bulk { joins: Vec<u64>, leaves: Vec<Index> },
    }

    const MAX_NODES: usize = 200;

    fn node_id() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..64, any::<u64>()]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => node_id().prop_map(Op::Join),
            2 => any::<Index>().prop_map(Op::Leave),
            2 => any::<Index>().prop_map(Op::Crash),
            1 => (
                proptest::collection::vec(node_id(), 0..60),
                proptest::collection::vec(any::<Index>(), 0..10),
            )
                .prop_map(|(joins, leaves)| Op::Bulk { joins, leaves }),
        ]
    }

    fn partition_count() -> impl Strategy<Value = usize> {
        prop_oneof![1usize..=16, 1usize..=4096]
    }

    fn pick(members: &BTreeSet<u64>, idx: &Index) -> Option<u64> {
        if members.is_empty() {
            return None;
        }
        members.iter().nth(idx.index(members.len())).copied()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Histories of joins, leaves and crashes from an empty table; every
        /// rule is checked after every step.
        #[test]
        fn histories_keep_every_rule(
            p in partition_count(),
            initial in proptest::collection::vec(node_id(), 0..=MAX_NODES),
            ops in proptest::collection::vec(op(), 1..16),
        ) {
            let mut members = BTreeSet::new();
            let mut table: Vec<Option<u64>> = vec![None; p];

            // Step 0: initial membership from an empty table.
            members.extend(initial);
            let next = assign(&members, &table);
            check_rules(&members, &table, &next)?;
            table = next;

            for op in ops {
                prop_assert!(is_balanced(&members, &table));
                let old_members = members.clone();
                let mut input = table.clone();
                match &op {
                    Op::Join(id) => {
                        if members.len() < MAX_NODES {
                            members.insert(*id);
                        }
                    }
                    Op::Leave(i) => {
                        if let Some(gone) = pick(&members, i) {
                            members.remove(&gone);
                            for o in &mut input {
                                if *o == Some(gone) {
                                    *o = None;
                                }
                            }
                        }
                    }
                    Op::Crash(i) => {
                        if let Some(gone) = pick(&members, i) {
                            members.remove(&gone);
                        }
                    }
                    Op::Bulk { joins, leaves } => {
                        for i in leaves {
                            if let Some(gone) = pick(&members, i) {
                                members.remove(&gone);
                            }
                        }
                        for &id in joins {
                            if members.len() < MAX_NODES {
                                members.insert(id);
                            }
                        }
                    }
                }
                let next = assign(&members, &input);
                check_rules(&members, &input, &next)?;

                let changed = moves(&table, &next);
                let joined: Vec<u64> = members.difference(&old_members).copied().collect();
                let left: Vec<u64> = old_members.difference(&members).copied().collect();
                match (joined.as_slice(), left.as_slice()) {
                    ([], []) => {
                        // Nothing changed: a balanced table stays exactly as it is.
                        prop_assert!(changed.is_empty(), "{:?}", changed);
                    }
                    ([new_node], []) => {
                        // (c) join: at most ceil(P/(n+1)) partitions move, all to the new node.
                        let bound = p.div_ceil(members.len());
                        prop_assert!(changed.len() <= bound, "{} > {}", changed.len(), bound);
                        prop_assert!(changed.iter().all(|m| m.to == Some(*new_node)));
                    }
                    ([], [gone]) => {
                        // (c) leave/crash: exactly the departed node's partitions move.
                        let held: Vec<u32> = (0u32..)
                            .zip(&table)
                            .filter(|(_, o)| **o == Some(*gone))
                            .map(|(i, _)| i)
                            .collect();
                        let moved: Vec<u32> = changed.iter().map(|m| m.partition).collect();
                        prop_assert_eq!(moved, held);
                        // A crash and a graceful leave give the same result.
                        let cleared: Vec<Option<u64>> =
                            table.iter().map(|o| o.filter(|o| o != gone)).collect();
                        let stale = table.clone();
                        prop_assert_eq!(assign(&members, &cleared), assign(&members, &stale));
                    }
                    _ => {}
                }
                table = next;
            }
        }

        /// Arbitrary (unbalanced, partially stale) tables and member sets.
        #[test]
        fn arbitrary_tables_keep_every_rule(
            (members, old) in (1usize..=600).prop_flat_map(|p| (
                proptest::collection::btree_set(0u64..100, 0..80),
                proptest::collection::vec(proptest::option::weighted(0.8, 0u64..120), p),
            )),
        ) {
            let new = assign(&members, &old);
            check_rules(&members, &old, &new)?;
        }

        /// Arbitrary tables with few nodes, so most nodes are over or under quota.
        #[test]
        fn skewed_tables_keep_every_rule(
            (members, old) in (1usize..=300).prop_flat_map(|p| (
                proptest::collection::btree_set(0u64..6, 0..6),
                proptest::collection::vec(proptest::option::weighted(0.9, 0u64..8), p),
            )),
        ) {
            let new = assign(&members, &old);
            check_rules(&members, &old, &new)?;
        }
    }
}

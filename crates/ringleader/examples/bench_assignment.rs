//! Partition assignment quality and cost, measured on the pure functions the
//! leader uses ([`assignment::assign`], via `handoff::plan`, plus
//! [`assignment::moves`]), with node ids drawn from a fixed-seed RNG (ids are
//! random `u64`s in a real cluster). Prints three GitHub-Markdown tables:
//!
//! 1. **Balance**: max - min partitions owned, for N = 1..=50 nodes and
//!    P = 10, 256, 4096, both assigning from scratch ("fresh") and growing
//!    the cluster one node at a time from 1 to N, each step sticky from the
//!    previous table ("grown"). Nodes that own nothing count as 0.
//! 2. **Join movement**: n balanced nodes, one joins; partitions that
//!    changed owner, against the minimum `floor(P/(n+1))` and the documented
//!    bound `ceil(P/(n+1))`.
//! 3. **Computation time** for P = 4096 and N = 100 and 1000: a fresh
//!    assignment, the reassignment after one node crashes and after one joins
//!    (median and fastest of 21 runs; 5 with `--quick`).
//!
//! ```sh
//! cargo run --release -p ringleader --example bench_assignment [-- --quick]
//! ```

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringleader::assignment::{assign, moves};

const PARTITION_COUNTS: [usize; 3] = [10, 256, 4096];
const MAX_NODES: usize = 50;
const BALANCE_ROWS: [usize; 11] = [1, 2, 3, 5, 7, 10, 15, 20, 30, 40, 50];

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    balance();
    join_movement();
    timing(if quick { 5 } else { 21 });
}

/// `count` distinct non-zero node ids from a fixed seed.
fn node_ids(count: usize, seed: u64) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = BTreeSet::new();
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let id: u64 = rng.random();
        if id != 0 && seen.insert(id) {
            ids.push(id);
        }
    }
    ids
}

/// max - min partitions per member (members owning nothing count as 0);
/// panics if a partition has no live owner.
fn spread(members: &BTreeSet<u64>, table: &[Option<u64>]) -> usize {
    assert!(
        table
            .iter()
            .all(|o| o.is_some_and(|o| members.contains(&o))),
        "incomplete assignment"
    );
    let counts: Vec<usize> = members
        .iter()
        .map(|m| table.iter().filter(|o| **o == Some(*m)).count())
        .collect();
    counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0)
}

fn balance() {
    let ids = node_ids(MAX_NODES, 1);
    // spreads[k][n - 1] = (fresh, grown) for PARTITION_COUNTS[k] and n nodes.
    let spreads: Vec<Vec<(usize, usize)>> = PARTITION_COUNTS
        .iter()
        .map(|&p| {
            let mut grown = vec![None; p];
            let mut members = BTreeSet::new();
            (1..=MAX_NODES)
                .map(|n| {
                    members.insert(ids[n - 1]);
                    grown = assign(&members, &grown);
                    let fresh = assign(&members, &vec![None; p]);
                    (spread(&members, &fresh), spread(&members, &grown))
                })
                .collect()
        })
        .collect();

    println!(
        "Balance: max - min partitions owned per node (nodes owning none count as 0; every partition \
         checked to have a live owner). \"fresh\" = `assign` on an empty table; \"grown\" = nodes added \
         one at a time from 1, each `assign` starting from the previous table (the sticky path).\n"
    );
    let mut header = String::from("| N |");
    let mut rule = String::from("|---:|");
    for p in PARTITION_COUNTS {
        header += &format!(" P={p} fresh | P={p} grown |");
        rule += "---:|---:|";
    }
    println!("{header}\n{rule}");
    for n in BALANCE_ROWS {
        let mut row = format!("| {n} |");
        for s in &spreads {
            row += &format!(" {} | {} |", s[n - 1].0, s[n - 1].1);
        }
        println!("{row}");
    }
    let mut row = format!("| worst of 1..={MAX_NODES} |");
    for s in &spreads {
        let fresh = s.iter().map(|x| x.0).max().unwrap_or(0);
        let grown = s.iter().map(|x| x.1).max().unwrap_or(0);
        row += &format!(" {fresh} | {grown} |");
    }
    println!("{row}\n");
}

fn join_movement() {
    println!(
        "Join movement: n nodes with a balanced table (fresh `assign`), one node joins, `assign` from \
         that table; \"moved\" = partitions whose owner changed (`moves`). The minimum is floor(P/(n+1)): \
         the newcomer starts with 0 and a balanced table gives it at least that many. ceil(P/(n+1)) is \
         the bound the assignment documentation promises (the newcomer may get the larger quota).\n"
    );
    println!(
        "| P | n → n+1 | moved | minimum floor(P/(n+1)) | bound ceil(P/(n+1)) | moved ≤ ceil | all moved to newcomer |"
    );
    println!("|---:|---|---:|---:|---:|---|---|");
    for p in PARTITION_COUNTS {
        for n in 1..=9usize {
            let ids = node_ids(n + 1, 2);
            let mut members: BTreeSet<u64> = ids[..n].iter().copied().collect();
            let before = assign(&members, &vec![None; p]);
            let newcomer = ids[n];
            members.insert(newcomer);
            let after = assign(&members, &before);
            let changed = moves(&before, &after);
            let ceil = p.div_ceil(n + 1);
            println!(
                "| {p} | {n} → {} | {} | {} | {ceil} | {} | {} |",
                n + 1,
                changed.len(),
                p / (n + 1),
                yes(changed.len() <= ceil),
                yes(changed.iter().all(|m| m.to == Some(newcomer))),
            );
        }
    }
    println!();
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "**no**" }
}

fn timing(runs: usize) {
    const P: usize = 4096;
    println!(
        "Assignment computation time, P = {P}, release build, one thread: median (fastest) of {runs} runs \
         of `assign`, in µs. Crash: one member gone, its entries cleared (as `handoff::plan` passes them); \
         join: one new member on a balanced table.\n"
    );
    println!("| N | fresh µs | one crash µs | one join µs | moved on crash | moved on join |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in [100usize, 1000] {
        let ids = node_ids(n + 1, 3);
        let members: BTreeSet<u64> = ids[..n].iter().copied().collect();
        let empty = vec![None; P];
        let (fresh_t, balanced) = time(runs, || assign(&members, &empty));

        let gone = ids[n / 2];
        let mut survivors = members.clone();
        survivors.remove(&gone);
        let cleared: Vec<Option<u64>> = balanced.iter().map(|o| o.filter(|o| *o != gone)).collect();
        let (crash_t, after_crash) = time(runs, || assign(&survivors, &cleared));

        let mut joined = members.clone();
        joined.insert(ids[n]);
        let (join_t, after_join) = time(runs, || assign(&joined, &balanced));

        println!(
            "| {n} | {fresh_t} | {crash_t} | {join_t} | {} | {} |",
            moves(&balanced, &after_crash).len(),
            moves(&balanced, &after_join).len(),
        );
    }
}

/// Runs `f` `runs` times; returns "median (fastest)" in µs and the last result.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (String, T) {
    let mut out = black_box(f()); // warm-up
    let mut micros: Vec<f64> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        out = black_box(f());
        micros.push(start.elapsed().as_secs_f64() * 1e6);
    }
    micros.sort_by(f64::total_cmp);
    (format!("{:.0} ({:.0})", micros[runs / 2], micros[0]), out)
}

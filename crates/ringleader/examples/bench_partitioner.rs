//! Partitioner throughput without criterion: keys per second of
//! [`Partitioner::partition_for`] (XXH64 of the key, then `mod P`) for 16-byte
//! and 256-byte keys, printed as a GitHub-Markdown table.
//!
//! Each run maps 2 048 000 keys (512 000 with `--quick`), cycling through a
//! pool of 1024 random keys (fixed seed) that stays in cache, so this is the
//! hashing cost, not memory bandwidth. Five runs per key size; the table gives
//! the slowest, median and fastest run. `P` = 4096 (the modulo costs the same
//! for any `P`).
//!
//! ```sh
//! cargo run --release -p ringleader --example bench_partitioner [-- --quick]
//! ```
//!
//! `cargo bench -p ringleader --bench partitioner` measures the same thing
//! with criterion.

use std::hint::black_box;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringleader::partitioner::Partitioner;

const POOL: usize = 1024;
const RUNS: usize = 5;
const PARTITIONS: u32 = 4096;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // Multiples of the pool size, about 2 million (500 000).
    let keys_per_run: usize = POOL * if quick { 500 } else { 2000 };
    let partitioner = Partitioner::new(PARTITIONS).expect("valid partition count");
    let mut rng = StdRng::seed_from_u64(6);

    println!(
        "Partitioner throughput: `Partitioner::partition_for` (XXH64 + mod {PARTITIONS}), \
         {RUNS} runs of {keys_per_run} keys cycling through {POOL} random keys, release build, one thread.\n"
    );
    println!(
        "| key size | slowest run (keys/s) | median run (keys/s) | fastest run (keys/s) | median ns/key |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for len in [16usize, 256] {
        let pool: Vec<Vec<u8>> = (0..POOL)
            .map(|_| (0..len).map(|_| rng.random()).collect())
            .collect();
        // One untimed run to warm caches, the branch predictor and the clock.
        run(&partitioner, &pool, keys_per_run);
        let mut rates: Vec<f64> = (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                run(&partitioner, &pool, keys_per_run);
                keys_per_run as f64 / start.elapsed().as_secs_f64()
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        let median = rates[RUNS / 2];
        println!(
            "| {len} B | {} | {} | {} | {:.1} |",
            si(rates[0]),
            si(median),
            si(rates[RUNS - 1]),
            1e9 / median
        );
    }
}

/// Maps `count` keys (a multiple of the pool size) from `pool`, round
/// robin: the same inner loop as the criterion benchmark.
fn run(partitioner: &Partitioner, pool: &[Vec<u8>], count: usize) {
    for _ in 0..count / pool.len() {
        let mut acc = 0u32;
        for key in pool {
            acc ^= partitioner.partition_for(black_box(key));
        }
        black_box(acc);
    }
}

/// `123.4 M`-style formatting.
fn si(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1} M", x / 1e6)
    } else {
        format!("{:.0} k", x / 1e3)
    }
}

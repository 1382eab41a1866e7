//! Criterion benchmark of [`Partitioner::partition_for`] (XXH64 of the key,
//! then `mod P`): keys per second for 16-byte and 256-byte keys, reported
//! with `Throughput::Elements`.
//!
//! One iteration maps a pool of 1024 random keys (fixed seed, stays in
//! cache). After criterion's own report, a GitHub-Markdown table of the
//! results (read back from criterion's `estimates.json`) goes to stdout.
//!
//! ```sh
//! cargo bench -p ringleader --bench partitioner            # full run
//! cargo bench -p ringleader --bench partitioner -- --quick # criterion's quick mode
//! ```
//!
//! `cargo run --release -p ringleader --example bench_partitioner` times the
//! same loop without criterion, in a few seconds.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringleader::partitioner::Partitioner;

const POOL: usize = 1024;
const PARTITIONS: u32 = 4096;
const GROUP: &str = "partitioner";
const SIZES: [usize; 2] = [16, 256];

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let partitioner = Partitioner::new(PARTITIONS).expect("valid partition count");
    let mut rng = StdRng::seed_from_u64(6);
    let mut group = criterion.benchmark_group(GROUP);
    group.throughput(Throughput::Elements(POOL as u64));
    for len in SIZES {
        let pool: Vec<Vec<u8>> = (0..POOL)
            .map(|_| (0..len).map(|_| rng.random()).collect())
            .collect();
        group.bench_function(format!("{len}B"), |b| {
            b.iter(|| {
                let mut acc = 0u32;
                for key in &pool {
                    acc ^= partitioner.partition_for(black_box(key));
                }
                acc
            });
        });
    }
    group.finish();
    criterion.final_summary();
    print_table();
}

/// Prints the Markdown table from the estimates criterion saved.
fn print_table() {
    let dir = output_dir();
    println!(
        "\nPartitioner throughput (criterion): `Partitioner::partition_for` (XXH64 + mod {PARTITIONS}), \
         one iteration = {POOL} cached random keys; keys/s from criterion's estimate of the time per \
         iteration (the slope of its linear sampling, else the mean), its 95% confidence interval, \
         and the median sample.\n"
    );
    println!("| key size | keys/s | 95% CI (keys/s) | median sample (keys/s) |");
    println!("|---:|---:|---:|---:|");
    for len in SIZES {
        let path = dir
            .join(GROUP)
            .join(format!("{len}B"))
            .join("new")
            .join("estimates.json");
        let Some(est) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        else {
            println!("| {len} B | no result ({} not found) | | |", path.display());
            continue;
        };
        // The slope when criterion sampled linearly, else the mean.
        let stat = if est["slope"].is_object() {
            "slope"
        } else {
            "mean"
        };
        // Nanoseconds per iteration -> keys per second.
        let rate = |pointer: &str| {
            est.pointer(pointer)
                .and_then(serde_json::Value::as_f64)
                .map_or_else(|| "?".into(), |ns| si(POOL as f64 * 1e9 / ns))
        };
        println!(
            "| {len} B | {} | {} - {} | {} |",
            rate(&format!("/{stat}/point_estimate")),
            // The upper time bound is the lower rate bound.
            rate(&format!("/{stat}/confidence_interval/upper_bound")),
            rate(&format!("/{stat}/confidence_interval/lower_bound")),
            rate("/median/point_estimate"),
        );
    }
}

/// Where criterion keeps its results, chosen as criterion does:
/// `$CRITERION_HOME`, else `<target dir>/criterion`.
fn output_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    // The bench runs as <target>/release/deps/partitioner-<hash>.
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
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

//! `cargo run -p ringleader-sim -- --seed N` replays one seed (printing its
//! trace summary); `--seeds K [--from S]` runs seeds S..S+K and prints a
//! summary; `--trace` prints the whole trace of a `--seed` run;
//! `--check-determinism` runs the seed twice and compares trace hashes;
//! `--outsider` adds the attacking outsider (`ringleader_sim::outsider`);
//! `--durable` gives every host a disk and adds restart faults
//! (`ringleader_sim::Mode::durable`); `--voters N` sets the voter target
//! (default 3, or the library's default with `--durable`); `--storms` adds
//! rolling restart storms (`ringleader_sim::Mode::storms`).
//! `--nodes N --partitions P` runs scale mode instead (see
//! `ringleader_sim::scale` and `scale_main` below).
//! `RINGLEADER_SIM_LOG=<filter>` (e.g. `ringleader=debug,openraft=info`)
//! prints the nodes' logs on stderr, each line in its host's span.

use std::process::ExitCode;
use std::time::{Duration, Instant};

fn usage() -> ExitCode {
    eprintln!(
        "usage: ringleader-sim (--seed N [--trace] [--check-determinism] | --seeds K [--from S]) [--outsider] [--durable] [--storms] [--voters N]\n       \
         ringleader-sim --nodes N [--partitions P] [--seed S] [--per-host K] [--window-s S] \
         [--deadline-s S] [--tick-ms T] [--poll-ms T] [--reps R] [--quiet]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    if let Ok(filter) = std::env::var("RINGLEADER_SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--nodes") {
        return scale_main(&args);
    }
    let mut seed = None;
    let mut seeds = None;
    let mut from = 0u64;
    let mut full_trace = false;
    let mut check_determinism = false;
    let mut mode = ringleader_sim::Mode::default();
    let mut voters = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = || it.next().and_then(|v| v.parse::<u64>().ok());
        match a.as_str() {
            "--seed" => match num() {
                Some(v) => seed = Some(v),
                None => return usage(),
            },
            "--seeds" => match num() {
                Some(v) => seeds = Some(v),
                None => return usage(),
            },
            "--from" => match num() {
                Some(v) => from = v,
                None => return usage(),
            },
            "--trace" => full_trace = true,
            "--check-determinism" => check_determinism = true,
            "--outsider" => mode.outsider = true,
            "--durable" => mode.durable = true,
            "--storms" => mode.storms = true,
            "--voters" => match num() {
                Some(v @ (1 | 3 | 5 | 7)) => voters = Some(v as usize),
                _ => return usage(),
            },
            _ => return usage(),
        }
    }
    // Plain seeds keep the 3 voters every soak before durable voters ran.
    mode.voters = voters.unwrap_or(if mode.durable { 0 } else { 3 });
    let run = |seed| ringleader_sim::run_seed_in(seed, mode);
    if let Some(seed) = seed {
        let started = Instant::now();
        let o = run(seed);
        if check_determinism {
            let again = run(seed);
            println!(
                "seed {seed}: trace hashes {:016x} and {:016x} ({})",
                o.trace_hash,
                again.trace_hash,
                if o.trace_hash == again.trace_hash {
                    "deterministic"
                } else {
                    "NOT deterministic"
                }
            );
            if o.trace_hash != again.trace_hash {
                return ExitCode::FAILURE;
            }
        }
        if full_trace {
            for l in &o.trace {
                println!("{l}");
            }
        }
        println!(
            "seed {seed}: {} nodes, {} partitions, {} faults, simulated {:.1} s in {:.1} s wall; converged {:?} ms after heal; store: {} accepted, {} stale refused; trace hash {:016x}",
            o.nodes,
            o.partitions,
            o.faults,
            o.simulated.as_secs_f64(),
            started.elapsed().as_secs_f64(),
            o.converged_after_ms,
            o.writes_accepted,
            o.stale_writes_refused,
            o.trace_hash
        );
        if o.violations.is_empty() {
            println!("no violations");
            return ExitCode::SUCCESS;
        }
        print!("{}", o.report());
        return ExitCode::FAILURE;
    }
    let Some(k) = seeds else { return usage() };
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut worst_convergence = 0;
    let mut refused = 0;
    let mut simulated = 0.0;
    for s in from..from + k {
        // A panic (ours or turmoil's) fails this seed, not the whole run.
        let o = match std::panic::catch_unwind(|| run(s)) {
            Ok(o) => o,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                println!("seed {s} PANICKED: {why}");
                failed.push(s);
                continue;
            }
        };
        simulated += o.simulated.as_secs_f64();
        refused += o.stale_writes_refused;
        worst_convergence = worst_convergence.max(o.converged_after_ms.unwrap_or(0));
        if !o.violations.is_empty() {
            print!("{}", o.report());
            failed.push(s);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "seeds {from}..{}: {k} run, {} with violations {:?}; wall {wall:.1} s ({:.2} seeds/s), simulated {simulated:.0} s; slowest convergence after heal {worst_convergence} ms; stale writes refused {refused}",
        from + k,
        failed.len(),
        failed,
        k as f64 / wall
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Scale mode: `--nodes N [--partitions P] [--seed S] [--per-host K]
/// [--window-s S] [--deadline-s S] [--tick-ms T] [--poll-ms T] [--reps R]
/// [--quiet]`; prints the table of [`ringleader_sim::scale::ScaleReport`] and
/// exits 1 if a phase did not reach stable ownership in time.
fn scale_main(args: &[String]) -> ExitCode {
    let mut config = ringleader_sim::scale::ScaleConfig::new(100, 4096);
    config.verbose = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--quiet" {
            config.verbose = false;
            continue;
        }
        let Some(v) = it.next().and_then(|v| v.parse::<u64>().ok()) else {
            return usage();
        };
        match a.as_str() {
            "--nodes" => config.nodes = v as usize,
            "--partitions" => config.partitions = v as u32,
            "--seed" => config.seed = v,
            "--per-host" => config.per_host = v as usize,
            "--window-s" => config.window = Duration::from_secs(v),
            "--deadline-s" => config.deadline = Duration::from_secs(v),
            "--tick-ms" => config.tick = Duration::from_millis(v.max(1)),
            "--poll-ms" => config.poll = Duration::from_millis(v.max(1)),
            "--reps" => config.assignment_reps = v as usize,
            _ => return usage(),
        }
    }
    if config.nodes < 5 || config.partitions == 0 {
        eprintln!("scale mode needs --nodes >= 5 and --partitions >= 1");
        return usage();
    }
    let report = ringleader_sim::scale::run(&config);
    println!("{}", report.table());
    if report.converged() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

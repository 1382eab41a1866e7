// One exception, with its reason next to it: memory.rs calls glibc's
// malloc_trim, which takes no arguments a caller could get wrong.
#![deny(unsafe_code)]
//! `ringleader`: run a node (`run`) or a local development cluster (`dev`).

mod dev;
mod http;
mod memory;
mod output;
mod printable;
mod query;
mod recover;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Membership, leader election and partition ownership for a cluster of
/// service instances.
#[derive(Debug, Parser)]
#[command(name = "ringleader", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node in the foreground. Events are printed on stdout as JSON
    /// lines; logs go to stderr.
    Run(Box<run::RunArgs>),
    /// Start a local cluster of child processes on loopback and watch it.
    Dev(dev::DevArgs),
    /// Print the cluster as a node sees it.
    Status(query::QueryArgs),
    /// Print the partition and owner of a key.
    Owner {
        /// The key.
        key: String,
        #[command(flatten)]
        query: query::QueryArgs,
    },
    /// Print the partition of a key.
    Partition {
        /// The key.
        key: String,
        #[command(flatten)]
        query: query::QueryArgs,
    },
    /// Restart a cluster that lost a majority of its voters for good from
    /// one survivor's data directory (see docs/operations.md).
    Recover(recover::RecoverArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        // The queries are one blocking request each: no runtime needed.
        Command::Status(q) => query::status(q),
        Command::Owner { key, query } => query::owner(query, &key, false),
        Command::Partition { key, query } => query::owner(query, &key, true),
        Command::Recover(args) => recover::main(args),
        // One thread is plenty for a node's work, and an idle node that
        // wakes a single thread costs less CPU (no cross-thread wake-ups) and
        // memory (one malloc arena, no worker stacks) than a thread pool.
        Command::Run(args) => block_on(single_thread(), run::main(*args)),
        Command::Dev(args) => block_on(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
            dev::main(args),
        ),
    }
}

fn single_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn block_on(
    runtime: std::io::Result<tokio::runtime::Runtime>,
    job: impl std::future::Future<Output = ExitCode>,
) -> ExitCode {
    match runtime {
        Ok(runtime) => runtime.block_on(job),
        Err(e) => {
            eprintln!("ringleader: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}

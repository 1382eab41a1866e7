#![forbid(unsafe_code)]
//! `ringleader`: run a node (`run`) or a local development cluster (`dev`).

mod dev;
mod http;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringleader: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::main(*args).await,
            Command::Dev(args) => dev::main(args).await,
        }
    })
}

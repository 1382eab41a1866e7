//! `ringleader recover`: disaster recovery of a cluster that lost a
//! majority of its voters for good (see `ringleader::raft::recover` and the
//! runbook in docs/operations.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ringleader::raft::recover;
use ringleader::raft::store::DiskStore;

/// Settings of `ringleader recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The data directory of one surviving node, which must not be running.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Restart the cluster from this node's state, as its only voter.
    #[arg(long, required = true)]
    pub force_new_cluster: bool,
    /// Confirms that the old majority of voters is gone for good (their
    /// machines lost, or their data directories wiped). Without it, the
    /// command only explains what it would do.
    #[arg(long)]
    pub confirm_majority_lost: bool,
}

const RISK: &str = "\
This makes this node the only voter of a new life of its cluster, from
everything its log holds. Entries that the lost voters committed after this
node last heard from them are lost, and every partition is revoked and
granted again with higher tokens. If the old voters are not really gone
and come back with their data, two clusters will claim the same name: wipe
their data directories before you start them again.";

/// Runs `ringleader recover`.
pub fn main(args: RecoverArgs) -> ExitCode {
    let store = match DiskStore::open_dir(&args.data_dir) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("ringleader: {e}");
            return ExitCode::from(1);
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let plan = match recover::plan(&store, now) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("ringleader: cannot recover: {e}");
            return ExitCode::from(1);
        }
    };
    let voters: Vec<String> = plan.old_voters.iter().map(|v| v.to_string()).collect();
    println!(
        "{}: node {} of cluster {:?}; log up to index {}; {} members; {} partitions held; voters were [{}]",
        store.place(),
        plan.node_id,
        plan.cluster,
        plan.last_index,
        plan.members,
        plan.owned,
        voters.join(", ")
    );
    if !args.confirm_majority_lost {
        eprintln!(
            "{RISK}\n\nNothing was changed. If the majority is really lost, run again with --confirm-majority-lost."
        );
        return ExitCode::from(2);
    }
    match recover::force_new_cluster(&store, now) {
        Ok(done) => {
            println!(
                "recovered: node {} is the only voter; the cluster's creation second moved from {} to {}, so every token from now on is above every earlier one. Start it again with `ringleader run --data-dir {}` and its usual settings; the others join it.",
                done.node_id,
                done.created.0,
                done.created.1,
                args.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringleader: recovery failed, the store is unchanged: {e}");
            ExitCode::from(1)
        }
    }
}

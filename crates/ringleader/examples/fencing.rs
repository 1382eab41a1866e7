//! Fencing a downstream store with grant tokens.
//!
//! Two nodes share 8 partitions. Each writes to a toy store that keeps, per
//! partition, the highest token it has seen and refuses writes carrying a
//! lower one (compare-and-set on the token). When a partition moves, the
//! old owner's late write is refused by the store even if the old owner has
//! not noticed yet. Run it with `cargo run -p ringleader --example fencing`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ringleader::{Event, Node};

/// A store that accepts a write for a partition only with a token at least
/// as high as any it accepted before (in SQL: `UPDATE t SET v = $v, fence =
/// $token WHERE partition = $p AND fence <= $token`).
#[derive(Default)]
struct FencedStore {
    rows: Mutex<HashMap<u32, (u64, String)>>,
}

impl FencedStore {
    fn write(&self, partition: u32, token: u64, value: &str) -> Result<(), String> {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let fence = rows.get(&partition).map_or(0, |(t, _)| *t);
        if token < fence {
            return Err(format!("stale token {token} < fence {fence}"));
        }
        rows.insert(partition, (token, value.to_string()));
        Ok(())
    }
}

async fn wait_for<F: Fn() -> bool>(what: &str, cond: F) -> Result<(), Box<dyn std::error::Error>> {
    for _ in 0..500 {
        if cond() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("timed out waiting for {what}").into())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = FencedStore::default();

    let a = Node::builder().name("a").partitions(8).start().await?;
    a.wait_ready(Duration::from_secs(10)).await?;
    wait_for("a to own every partition", || a.owned().len() == 8).await?;
    let a_grants = a.owned();
    for g in &a_grants {
        store.write(g.partition, g.token, "written by a")?;
    }
    println!("a owns {} partitions and wrote to each", a_grants.len());

    // A well-behaved owner releases what the leader asks for.
    let releaser = {
        let a = a.clone();
        let mut events = a.events();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let Event::PartitionsRevoking { partitions, .. } = event {
                    println!("a stops work on {partitions:?} and releases them");
                    let _ = a.release(&partitions).await;
                }
            }
        })
    };

    let b = Node::builder()
        .name("b")
        .partitions(8)
        .seeds([a.info().addr.clone()])
        .start()
        .await?;
    b.wait_ready(Duration::from_secs(10)).await?;
    wait_for("b to own half", || b.owned().len() == 4).await?;
    for g in b.owned() {
        store.write(g.partition, g.token, "written by b")?;
    }
    println!(
        "b owns {:?}",
        b.owned().iter().map(|g| g.partition).collect::<Vec<_>>()
    );

    // A late write from a, with the token of a grant it no longer holds,
    // is refused by the store.
    let moved = b.owned()[0];
    let stale = a_grants
        .iter()
        .find(|g| g.partition == moved.partition)
        .ok_or("a held every partition before")?;
    match store.write(stale.partition, stale.token, "late write by a") {
        Err(reason) => println!(
            "the store refused a's late write to {}: {reason}",
            stale.partition
        ),
        Ok(()) => return Err("a stale write was accepted".into()),
    }

    releaser.abort();
    // `leave` would hand b's partitions back to a first (waiting for b's
    // application to release them); the demo is over, so just stop.
    b.shutdown().await;
    a.shutdown().await;
    Ok(())
}

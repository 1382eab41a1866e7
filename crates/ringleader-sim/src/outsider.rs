//! A byzantine-ish outsider on the simulated network (issue 18).
//!
//! It speaks the wire protocol and attacks live nodes at random moments of
//! the fault phase: handshakes without the secret or with a wrong one, a
//! frame head declaring 8 MiB before the handshake, and, holding the
//! secret (a compromised member), requests that speak for the node it is
//! talking to (leave it, release its partitions, heartbeat for it, a vote
//! or an AppendEntries in its name with a huge term), a join at that
//! node's address and a join with an oversized name. Each must be refused;
//! anything else is reported as a violation, and the cluster's own
//! invariants are checked as for every seed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{CommittedLeaderId, LogId, Vote};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringleader::protocol::{JoinOutcome, ProbeInfo, Request, Response};
use ringleader::transport::Net;
use ringleader::transport::codec::{framed, recv_required, send};
use ringleader::transport::handshake::{self, Secret};
use ringleader::types::NodeInfo;

use crate::{PORT, TurmoilNet, sim_secret};

/// The outsider's own node id (no simulated node draws it: theirs are below
/// 2^63).
const OUTSIDER_ID: u64 = u64::MAX - 7;

/// What the outsider found wrong, for the driver to report.
pub type Findings = Arc<Mutex<Vec<String>>>;

/// The outsider's program: after `start`, an attack on a random host every
/// 200-900 ms of simulated time until `until`.
pub async fn software(
    seed: u64,
    hosts: Vec<String>,
    partitions: u32,
    start: Duration,
    until: Duration,
    findings: Findings,
) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6f75_7473_6964_6572);
    tokio::time::sleep(start).await;
    let began = tokio::time::Instant::now();
    while began.elapsed() < until.saturating_sub(start) {
        let host = &hosts[rng.random_range(0..hosts.len())];
        let attack = rng.random_range(0..4);
        let addr = format!("{host}:{PORT}");
        if let Some(wrong) = attack_once(&addr, attack, partitions).await {
            lock(&findings).push(format!("outsider against {host}: {wrong}"));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..900))).await;
    }
    Ok(())
}

fn lock(f: &Findings) -> std::sync::MutexGuard<'_, Vec<String>> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one attack; `Some(what)` when the node accepted what it must not.
async fn attack_once(addr: &str, attack: u32, partitions: u32) -> Option<String> {
    let Ok(stream) = TurmoilNet.connect(addr).await else {
        return None; // down or cut off: nothing to attack
    };
    let mut conn = framed(stream, 16 << 20);
    let timeout = Duration::from_secs(2);
    match attack {
        0 | 1 => {
            let wrong = Secret::new(&b"not the cluster secret at all"[..]).ok();
            let secret = if attack == 0 { None } else { wrong.as_ref() };
            let admitted = tokio::time::timeout(
                timeout,
                handshake::client(&mut conn, "ringleader", OUTSIDER_ID, secret),
            )
            .await;
            matches!(admitted, Ok(Ok(_))).then(|| {
                format!(
                    "admitted with {}",
                    if attack == 0 {
                        "no secret"
                    } else {
                        "a wrong secret"
                    }
                )
            })
        }
        2 => {
            // A frame head declaring 8 MiB, then a trickle: the node must
            // not wait for (or allocate) the rest before a handshake.
            let mut raw = conn.into_inner();
            let _ =
                tokio::io::AsyncWriteExt::write_all(&mut raw, &(8u32 << 20).to_be_bytes()).await;
            let _ = tokio::io::AsyncWriteExt::write_all(&mut raw, &[0u8; 64]).await;
            None
        }
        _ => tokio::time::timeout(timeout * 4, impersonate(&mut conn, addr, partitions))
            .await
            .unwrap_or(None),
    }
}

/// Holding the secret, speaks for the node it is connected to.
async fn impersonate<S>(
    conn: &mut ringleader::transport::codec::FramedStream<S>,
    victim_addr: &str,
    partitions: u32,
) -> Option<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let secret = sim_secret();
    handshake::client(conn, "ringleader", OUTSIDER_ID, Some(&secret))
        .await
        .ok()?;
    conn.codec_mut().set_max_frame(16 << 20);
    let Response::Probe(ProbeInfo { id: victim, .. }) = ask(conn, Request::Probe).await? else {
        return None;
    };
    let huge = Vote::new_committed(u64::MAX / 2, victim);
    let forged = [
        ("Leave", Request::Leave { id: victim }),
        (
            "Release",
            Request::Release {
                id: victim,
                partitions: vec![(0, 1)],
            },
        ),
        (
            "Heartbeat",
            Request::Heartbeat {
                id: victim,
                known_created: 0,
                known_index: 0,
                released: Vec::new(),
            },
        ),
        (
            "Vote",
            Request::Vote {
                target: victim,
                rpc: VoteRequest::new(Vote::new(u64::MAX / 2, victim), None),
            },
        ),
        (
            "AppendEntries",
            Request::AppendEntries {
                target: victim,
                rpc: AppendEntriesRequest {
                    vote: huge,
                    prev_log_id: Some(LogId::new(CommittedLeaderId::new(u64::MAX / 2, victim), 0)),
                    entries: Vec::new(),
                    leader_commit: None,
                },
            },
        ),
    ];
    for (what, request) in forged {
        match ask(conn, request).await? {
            Response::Error(_) => {}
            other => {
                return Some(format!(
                    "a forged {what} in its name was answered {other:?}"
                ));
            }
        }
    }
    let join = |name: String, addr: String| Request::Join {
        id: OUTSIDER_ID,
        info: NodeInfo {
            name,
            addr,
            http_addr: None,
        },
        num_partitions: partitions,
        incarnation: 0,
    };
    // The address of the node we are talking to: it is alive, so the join
    // must be refused (a follower refers us to the leader instead).
    for (what, request) in [
        (
            "a join at a member's address",
            join("thief".into(), victim_addr.into()),
        ),
        (
            "a join with a 300-byte name",
            join("x".repeat(300), "outsider:1".into()),
        ),
    ] {
        match ask(conn, request).await? {
            Response::Join(
                JoinOutcome::Refused(_) | JoinOutcome::NotNow(_) | JoinOutcome::NotLeader { .. },
            ) => {}
            other => return Some(format!("{what} was answered {other:?}")),
        }
    }
    None
}

async fn ask<S>(
    conn: &mut ringleader::transport::codec::FramedStream<S>,
    request: Request,
) -> Option<Response>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    send(conn, &request).await.ok()?;
    recv_required(conn).await.ok()
}

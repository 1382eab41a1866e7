//! Structure-aware: every post-handshake message type, built field by field
//! from the fuzz input (`arbitrary`), through what a node does with a peer's
//! message before and after trusting it. Must never panic.
//!
//! - encode/decode round trip, and the frame limit: a message either
//!   encodes within the limit or is one a node would never send;
//! - `Request::check_sender` for a random connection identity: whatever
//!   it admits speaks only for that identity and lists at most P partitions;
//! - `limits::check_info` on every node description;
//! - every command carried (in AppendEntries entries, in a member's delta)
//!   applied to a cluster state in order: `ClusterState::apply` must not
//!   panic on any sequence, and partition tokens only rise.

#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use ringleader::limits;
use ringleader::partitions::PartitionOp;
use ringleader::protocol::{HeartbeatOutcome, Request, Response, Update};
use ringleader::raft::TypeConfig;
use ringleader::state::{ClusterIdentity, ClusterState, Command};
use ringleader::transport::codec;
use ringleader::types::{LeaveReason, NodeId, NodeInfo};

/// Small ids collide often, so checks that compare ids get exercised.
fn id(u: &mut Unstructured<'_>) -> Result<NodeId> {
    Ok(if u.arbitrary()? {
        u.int_in_range(0..=4)?
    } else {
        u.arbitrary()?
    })
}

fn partition(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(if u.arbitrary()? {
        u.int_in_range(0..=40)?
    } else {
        u.arbitrary()?
    })
}

fn text(u: &mut Unstructured<'_>) -> Result<String> {
    let len = u.int_in_range(0..=300)?;
    let c: char = u.arbitrary()?;
    Ok(std::iter::repeat_n(c, len).collect::<String>() + &String::arbitrary(u)?)
}

fn info(u: &mut Unstructured<'_>) -> Result<NodeInfo> {
    Ok(NodeInfo {
        name: text(u)?,
        addr: text(u)?,
        http_addr: if u.arbitrary()? { Some(text(u)?) } else { None },
    })
}

fn pairs(u: &mut Unstructured<'_>) -> Result<Vec<(u32, u64)>> {
    let n = u.int_in_range(0..=64)?;
    (0..n).map(|_| Ok((partition(u)?, id(u)?))).collect()
}

fn command(u: &mut Unstructured<'_>) -> Result<Command> {
    Ok(match u.int_in_range(0..=7)? {
        0 => Command::Init(ClusterIdentity {
            name: text(u)?,
            created_secs: u.arbitrary()?,
            num_partitions: u.int_in_range(0..=64)?,
        }),
        1 => Command::NewEpoch { leader: id(u)? },
        2 => Command::AddMember {
            id: id(u)?,
            info: info(u)?,
            incarnation: u.arbitrary()?,
        },
        3 => Command::RemoveMember {
            id: id(u)?,
            reason: if u.arbitrary()? {
                LeaveReason::Left
            } else {
                LeaveReason::Expired
            },
        },
        4 => Command::SetVoters(
            (0..u.int_in_range(0..=5)?)
                .map(|_| id(u))
                .collect::<Result<_>>()?,
        ),
        5 => Command::Partitions(PartitionOp::Grant(pairs(u)?)),
        6 => Command::Partitions(if u.arbitrary()? {
            PartitionOp::Revoke(pairs(u)?.into_iter().map(|p| p.0).collect())
        } else {
            PartitionOp::Release(pairs(u)?.into_iter().map(|p| p.0).collect())
        }),
        _ => Command::Noop,
    })
}

fn vote(u: &mut Unstructured<'_>) -> Result<Vote<NodeId>> {
    let term = u.int_in_range(0..=9)?;
    Ok(if u.arbitrary()? {
        Vote::new_committed(term, id(u)?)
    } else {
        Vote::new(term, id(u)?)
    })
}

fn append(u: &mut Unstructured<'_>) -> Result<AppendEntriesRequest<TypeConfig>> {
    let leader = vote(u)?;
    let term = leader.leader_id().term;
    let node = leader.leader_id().voted_for().unwrap_or(0);
    let first: u64 = u.int_in_range(0..=20)?;
    let entries = (0..u.int_in_range(0..=8)?)
        .map(|i| {
            Ok(Entry {
                log_id: LogId::new(CommittedLeaderId::new(term, node), first + i),
                payload: EntryPayload::Normal(command(u)?),
            })
        })
        .collect::<Result<_>>()?;
    Ok(AppendEntriesRequest {
        vote: leader,
        prev_log_id: None,
        entries,
        leader_commit: None,
    })
}

fn request(u: &mut Unstructured<'_>) -> Result<Request> {
    Ok(match u.int_in_range(0..=8)? {
        0 => Request::AppendEntries {
            target: id(u)?,
            rpc: append(u)?,
        },
        1 => Request::Vote {
            target: id(u)?,
            rpc: VoteRequest::new(vote(u)?, None),
        },
        2 => Request::Probe,
        3 => Request::Join {
            id: id(u)?,
            info: info(u)?,
            num_partitions: partition(u)?,
            incarnation: u.arbitrary()?,
        },
        4 => Request::Heartbeat {
            id: id(u)?,
            known_created: u.arbitrary()?,
            known_index: u.arbitrary()?,
            released: pairs(u)?,
        },
        5 => Request::Leave { id: id(u)? },
        6 => Request::Release {
            id: id(u)?,
            partitions: pairs(u)?,
        },
        7 => Request::Poke { target: id(u)? },
        _ => Request::Beat {
            target: id(u)?,
            rpc: append(u)?,
            round: u.arbitrary()?,
            renewed: u.arbitrary()?,
            revocations: pairs(u)?,
            suspects: (0..u.int_in_range(0..=5)?)
                .map(|_| id(u))
                .collect::<Result<_>>()?,
            table: (u.arbitrary()?, u.arbitrary()?),
        },
    })
}

/// Applies `commands` in log order; tokens of every slot only rise.
fn apply_all(commands: &[(u64, Command)]) {
    let mut state = ClusterState::default();
    for (index, command) in commands {
        let before: Vec<u64> = state.partitions.slots().iter().map(|s| s.token).collect();
        let _ = state.apply(*index, command);
        for (old, slot) in before.iter().zip(state.partitions.slots()) {
            assert!(slot.token >= *old, "a token went backwards");
        }
    }
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let sender = id(u)?;
    let p = u.int_in_range(1..=64)?;
    let req = request(u)?;
    let bytes = codec::encode(&req).expect("every request encodes");
    let back: Request = codec::decode(&bytes).expect("a request decodes");
    assert_eq!(format!("{req:?}"), format!("{back:?}"));
    if req.check_sender(sender, p).is_ok() {
        match &req {
            Request::Join { id, .. }
            | Request::Heartbeat { id, .. }
            | Request::Leave { id }
            | Request::Release { id, .. } => assert_eq!(*id, sender),
            Request::AppendEntries { rpc, .. } | Request::Beat { rpc, .. } => {
                assert_eq!(rpc.vote.leader_id().voted_for(), Some(sender));
            }
            Request::Vote { rpc, .. } => assert_eq!(rpc.vote.leader_id().voted_for(), Some(sender)),
            _ => {}
        }
    }
    if let Request::Join { info, .. } = &req {
        if limits::check_info(info).is_ok() {
            assert!(info.name.len() <= limits::MAX_NAME_BYTES);
        }
    }
    if let Request::AppendEntries { rpc, .. } | Request::Beat { rpc, .. } = &req {
        let commands: Vec<(u64, Command)> = rpc
            .entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(c) => Some((e.log_id.index, c.clone())),
                _ => None,
            })
            .collect();
        apply_all(&commands);
        let delta = Response::Heartbeat(HeartbeatOutcome::Ack {
            update: Update::Delta(commands),
            suspects: Vec::new(),
            revocations: pairs(u)?,
        });
        let again: Response =
            codec::decode(&codec::encode(&delta).expect("encodes")).expect("decodes");
        assert_eq!(format!("{delta:?}"), format!("{again:?}"));
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

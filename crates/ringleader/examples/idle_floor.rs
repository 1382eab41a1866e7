//! The floor under row 6 of `bench/run`: what an idle cluster's message
//! pattern costs on this machine when nothing else runs.
//!
//! One process per node, like `ringleader run`: a single-threaded tokio
//! runtime, length-prefixed frames over loopback TCP, and exactly the
//! peer exchanges an idle ringleader cluster makes at the given settings.
//! Node 0 plays the leader, nodes `1..voters` the other voters and the rest
//! the members:
//!
//! - every member (not a voter) sends a heartbeat to the leader each
//!   `--heartbeat-ms` and waits for the answer;
//! - the leader sends a quorum confirmation to every other voter each
//!   `--raft-heartbeat-ms` and waits for their answers (these also keep the
//!   voters' sessions, so voters send no heartbeats of their own).
//!
//! No Raft, no state, no timers beyond those two. `bench/run` measures the
//! CPU of these processes the same way as the real nodes', so the report can
//! say how much of a node's idle CPU is the message pattern itself and how
//! much is ringleader's own.
//!
//! ```text
//! cargo run --release -p ringleader --example idle_floor -- \
//!     --index 0 --base-port 7300 --nodes 5 --voters 3 \
//!     --heartbeat-ms 200 --raft-heartbeat-ms 50
//! ```

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// The settings of one floor node.
struct Args {
    index: u16,
    base_port: u16,
    nodes: u16,
    voters: u16,
    heartbeat: Duration,
    raft_heartbeat: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        index: 0,
        base_port: 7300,
        nodes: 5,
        voters: 3,
        heartbeat: Duration::from_millis(200),
        raft_heartbeat: Duration::from_millis(50),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        let port = |v: &str| v.parse::<u16>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--index" => args.index = port(&value)?,
            "--base-port" => args.base_port = port(&value)?,
            "--nodes" => args.nodes = port(&value)?,
            "--voters" => args.voters = port(&value)?,
            "--heartbeat-ms" => args.heartbeat = Duration::from_millis(number(&value)?),
            "--raft-heartbeat-ms" => args.raft_heartbeat = Duration::from_millis(number(&value)?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.index >= args.nodes || args.voters == 0 || args.voters > args.nodes {
        return Err("need index < nodes and 1 <= voters <= nodes".into());
    }
    if args.base_port.checked_add(args.nodes).is_none() {
        return Err("base-port + nodes must stay below 65536".into());
    }
    if args.heartbeat.is_zero() || args.raft_heartbeat.is_zero() {
        return Err("intervals must be positive".into());
    }
    Ok(args)
}

type Conn = Framed<TcpStream, LengthDelimitedCodec>;

/// Connects to a peer, retrying while it starts.
async fn connect(port: u16) -> std::io::Result<Conn> {
    let mut last = None;
    for _ in 0..100 {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(Framed::new(stream, LengthDelimitedCodec::new()));
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no attempt made")))
}

/// Answers every frame a peer sends with a short one, as a node answers a
/// heartbeat or an AppendEntries.
async fn answer(stream: TcpStream) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut conn = Framed::new(stream, LengthDelimitedCodec::new());
    let reply = Bytes::from_static(&[5, 0, 0, 0, 0]);
    while let Some(Ok(_request)) = conn.next().await {
        if conn.send(reply.clone()).await.is_err() {
            return;
        }
    }
}

/// Sends one request each `every` on every connection and waits for the
/// answers, like a heartbeat loop or a quorum check.
async fn ask(mut conns: Vec<Conn>, every: Duration, request: Bytes) -> std::io::Result<()> {
    let mut tick = interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for conn in &mut conns {
            conn.send(request.clone()).await?;
        }
        for conn in &mut conns {
            match timeout(Duration::from_millis(500), conn.next()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => return Err(std::io::Error::other("peer closed")),
                Err(_) => {}
            }
        }
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", args.base_port + args.index)).await?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream));
        }
    });
    if args.index == 0 {
        // The leader: a quorum confirmation (an empty AppendEntries, about
        // 60 bytes) to every other voter each Raft heartbeat.
        let mut voters = Vec::new();
        for i in 1..args.voters {
            voters.push(connect(args.base_port + i).await?);
        }
        ask(voters, args.raft_heartbeat, Bytes::from(vec![7u8; 60])).await
    } else if args.index < args.voters {
        // The other voters only answer: the leader's confirmations also keep
        // their sessions (ringleader::beat).
        std::future::pending().await
    } else {
        // The members: a heartbeat (about 20 bytes) to the leader.
        let leader = connect(args.base_port).await?;
        ask(vec![leader], args.heartbeat, Bytes::from(vec![5u8; 18])).await
    }
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("idle_floor: {e}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("idle_floor: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("idle_floor: {e}");
        std::process::exit(1);
    }
}

//! `ringleader dev`: a local cluster of child processes and a live feed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::printable::{MAX_LINE, clean};

/// Settings of `ringleader dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// How many nodes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Number of partitions.
    #[arg(long, default_value_t = ringleader::config::DEFAULT_PARTITIONS)]
    pub partitions: u32,
    /// First peer port; node i listens on base-port + i.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
    /// First HTTP API port; node i serves on http-base-port + i.
    #[arg(long, default_value_t = 9100)]
    pub http_base_port: u16,
    /// Keep node i's data in DIR/n<i>, so the next `dev` with the same
    /// directory resumes the same cluster (default: a private temporary
    /// directory, removed when `dev` ends).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
}

enum Report {
    Line {
        node: String,
        line: String,
    },
    Exited {
        node: String,
        pid: u32,
        status: String,
    },
}

struct Feed {
    names: HashMap<u64, String>,
    recent: HashMap<String, Instant>,
    started: Instant,
}

impl Feed {
    /// Prints one line of a node's output (its event, readable, or the line
    /// itself if it is not an event) and returns the event.
    fn show(&mut self, node: &str, line: &str) -> Option<Value> {
        let (text, event) = self.shown(node, line);
        if let Some(text) = text {
            println!("{text}");
        }
        event
    }

    /// What [`Feed::show`] prints for a line (if anything), and the event.
    /// Names and addresses in events come from peers: they are printed
    /// bounded and without control characters.
    fn shown(&mut self, node: &str, line: &str) -> (Option<String>, Option<Value>) {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            return (Some(format!("{node}: {}", clean(line, MAX_LINE))), None);
        };
        let text = self.render(node, &event).map(|t| clean(&t, MAX_LINE));
        (text, Some(event))
    }

    fn name(&self, id: &Value) -> String {
        as_id(id)
            .and_then(|id| self.names.get(&id).cloned())
            .unwrap_or_else(|| id.to_string())
    }

    /// A readable line for one event, or None for a cluster-wide event
    /// another node already reported.
    fn render(&mut self, node: &str, event: &Value) -> Option<String> {
        let kind = event.get("type")?.as_str()?.to_string();
        if let Some(info) = event.get("info") {
            if let (Some(id), Some(name)) = (event.get("id").and_then(as_id), info.get("name")) {
                self.names.insert(id, crate::printable::field(name, "?"));
            }
        }
        let text = match kind.as_str() {
            "ready" => {
                let id = event.get("id").and_then(as_id)?;
                self.names.insert(id, node.to_string());
                return None;
            }
            "became_leader" => format!(
                "{node} became the leader (epoch {})",
                event["epoch"].as_str().unwrap_or("?")
            ),
            "leader_changed" => format!(
                "leader is now {} (epoch {})",
                self.name(&event["leader"]),
                event["epoch"]
            ),
            "member_joined" => format!(
                "{} joined as {}",
                event["info"]["name"].as_str().unwrap_or("?"),
                event["role"].as_str().unwrap_or("?")
            ),
            "member_left" => format!(
                "{} left ({})",
                event["info"]["name"].as_str().unwrap_or("?"),
                event["reason"].as_str().unwrap_or("?")
            ),
            "role_changed" => format!(
                "{} is now a {}",
                self.name(&event["id"]),
                event["role"].as_str().unwrap_or("?")
            ),
            "partitions_assigned" => {
                let parts = list(&event["partitions"], |g| g["partition"].to_string());
                format!("{node} now owns {}", compact(&parts))
            }
            "partitions_revoking" => {
                let parts = list(&event["partitions"], Value::to_string);
                format!("{node} is handing off {}", compact(&parts))
            }
            "partitions_lost" => {
                let parts = list(&event["partitions"], Value::to_string);
                format!("{node} LOST {}", compact(&parts))
            }
            other => format!("{node}: {other} {event}"),
        };
        // Cluster-wide events arrive once per node: show each once.
        let key = match kind.as_str() {
            "became_leader" => format!("{node}{text}"),
            // A node that catches up from a snapshot reports every member as
            // joined, with its current role: one line per member is enough.
            "member_joined" => format!("joined {}", event["id"]),
            _ => text.clone(),
        };
        let now = Instant::now();
        self.recent
            .retain(|_, t| now.duration_since(*t) < Duration::from_secs(5));
        if self.recent.insert(key, now).is_some() {
            return None;
        }
        let at = self.started.elapsed().as_secs_f64();
        Some(format!("[{at:8.3}s] {text}"))
    }
}

pub async fn main(args: DevArgs) -> ExitCode {
    if args.nodes == 0 || args.nodes > 50 {
        eprintln!("ringleader: invalid configuration: nodes: must be 1 to 50");
        return ExitCode::from(2);
    }
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("ringleader: cannot find my own executable");
        return ExitCode::from(1);
    };
    // Every node authenticates its peers with a fresh secret; the directory
    // (mode 0700, the file 0600) is removed when `dev` returns, and so are
    // the nodes' data directories in it, unless --data-dir put them elsewhere.
    let (secret_dir, secret_file) = match write_secret() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringleader: cannot write the cluster secret: {e}");
            return ExitCode::from(1);
        }
    };
    let addrs: Vec<String> = (0..args.nodes)
        .map(|i| format!("127.0.0.1:{}", args.base_port.saturating_add(i)))
        .collect();
    let seeds = addrs.join(",");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut children: BTreeMap<String, (u32, String)> = BTreeMap::new();
    let mut apis: BTreeMap<String, String> = BTreeMap::new();
    let mut handles: Vec<Child> = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let http = format!("127.0.0.1:{}", args.http_base_port.saturating_add(i as u16));
        apis.insert(name.clone(), http.clone());
        let data_dir = args
            .data_dir
            .as_deref()
            .unwrap_or(secret_dir.path())
            .join(&name);
        let spawned = Command::new(&exe)
            .args(["run", "--name", &name, "--listen", addr, "--seeds", &seeds])
            .args(["--http", &http])
            .args(["--partitions", &args.partitions.to_string()])
            .args(["--log", "error,openraft=off", "--auto-release"])
            .arg("--secret-file")
            .arg(&secret_file)
            .arg("--data-dir")
            .arg(&data_dir)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            // A process group of its own: a Ctrl-C at the terminal reaches
            // only `dev`, which then stops the nodes in an order the cluster
            // can follow (`stop_in_order`) instead of all at once.
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ringleader: cannot start {name}: {e}");
                return ExitCode::from(1);
            }
        };
        let pid = child.id().unwrap_or(0);
        children.insert(name.clone(), (pid, addr.clone()));
        if let Some(stdout) = child.stdout.take() {
            let tx = tx.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = tx.send(Report::Line {
                        node: name.clone(),
                        line,
                    });
                }
            });
        }
        handles.push(child);
    }
    println!(
        "ringleader dev: starting {} nodes ({} partitions)\n",
        args.nodes, args.partitions
    );
    let mut feed = Feed {
        names: HashMap::new(),
        recent: HashMap::new(),
        started: Instant::now(),
    };
    let mut ready: BTreeMap<String, Value> = BTreeMap::new();
    let mut table_printed = false;
    let mut table_at: Option<tokio::time::Instant> = None;
    // Watch for exits without holding the children mutably elsewhere.
    let mut waiters = Vec::new();
    for (child, name) in handles.into_iter().zip(children.keys().cloned()) {
        let tx = tx.clone();
        let pid = child.id().unwrap_or(0);
        let mut child = child;
        waiters.push(tokio::spawn(async move {
            let status = tokio::select! {
                s = child.wait() => s.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
            };
            let _ = tx.send(Report::Exited {
                node: name,
                pid,
                status,
            });
        }));
    }
    drop(tx);
    let mut live: BTreeSet<String> = children.keys().cloned().collect();
    // Without SIGTERM and SIGHUP handlers, `kill`, a supervisor or a closed
    // terminal ending `dev` would leave its nodes (in their own process
    // groups) running.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut hangup = signal(SignalKind::hangup()).ok();
    loop {
        let table_due = table_at;
        let report = tokio::select! {
            r = rx.recv() => r,
            _ = async move {
                match table_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                table_at = None;
                let first_api = apis.values().next().cloned().unwrap_or_default();
                let status = tokio::task::block_in_place(|| fetch_status(&first_api));
                print_table(&children, &apis, &ready, status.as_ref());
                continue;
            }
            _ = stop_requested(&mut term, &mut hangup) => {
                println!("\nstopping every node: members first, the leader last ...");
                stop_in_order(&children, &apis, &mut live, &mut rx, &mut feed).await;
                for w in &waiters { w.abort(); } // kill_on_drop ends any straggler
                println!("all nodes stopped");
                return ExitCode::SUCCESS;
            }
        };
        let Some(report) = report else { break };
        match report {
            Report::Exited { node, pid, status } => {
                live.remove(&node);
                println!(
                    "[{:8.3}s] {node} (pid {pid}) exited: {status}",
                    feed.started.elapsed().as_secs_f64()
                );
                if live.is_empty() {
                    println!("every node has exited");
                    return ExitCode::SUCCESS;
                }
            }
            Report::Line { node, line } => {
                let Some(event) = feed.show(&node, &line) else {
                    continue;
                };
                if event["type"] == "ready" {
                    ready.insert(node.clone(), event);
                }
                if !table_printed && ready.len() == children.len() {
                    // Give the first handoffs a moment, then show the table.
                    table_printed = true;
                    table_at = Some(tokio::time::Instant::now() + Duration::from_millis(1500));
                }
            }
        }
    }
    ExitCode::SUCCESS
}

/// Bytes of randomness in the secret `dev` gives its nodes.
const SECRET_BYTES: usize = 32;

/// Writes a random cluster secret (32 bytes from the OS, hex encoded) into
/// a new private temporary directory; returns the directory (removed when
/// dropped) and the file's path.
fn write_secret() -> std::io::Result<(tempfile::TempDir, std::path::PathBuf)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let dir = tempfile::Builder::new()
        .prefix("ringleader-dev-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()?;
    let path = dir.path().join("secret");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?
        .write_all(hex.as_bytes())?;
    Ok((dir, path))
}

/// A 64-bit id written as a decimal string (or a plain number).
fn as_id(v: &Value) -> Option<u64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64())
}

/// The items of a JSON array, rendered by `f`.
fn list(value: &Value, f: impl Fn(&Value) -> String) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().map(f).collect())
        .unwrap_or_default()
}

/// "[0, 1, 2, ... 9 more]" for long lists.
fn compact(parts: &[String]) -> String {
    if parts.len() <= 8 {
        return format!("[{}]", parts.join(", "));
    }
    format!("[{}, ... {} more]", parts[..8].join(", "), parts.len() - 8)
}

/// One node's `/status`, for the table (None if it does not answer).
fn fetch_status(api: &str) -> Option<Value> {
    fetch_status_within(api, Duration::from_secs(2))
}

/// One node's `/status`, or None if it does not answer within `timeout`.
fn fetch_status_within(api: &str, timeout: Duration) -> Option<Value> {
    ureq::get(&format!("http://{api}/status"))
        .timeout(timeout)
        .call()
        .ok()?
        .into_json()
        .ok()
}

fn print_table(
    children: &BTreeMap<String, (u32, String)>,
    apis: &BTreeMap<String, String>,
    ready: &BTreeMap<String, Value>,
    status: Option<&Value>,
) {
    println!(
        "\n{:<6} {:>8}  {:<18} {:<34} {:<7} {:>6}",
        "NODE", "PID", "PEER ADDRESS", "API", "ROLE", "OWNS"
    );
    let row = |name: &str| {
        status
            .and_then(|s| s["members"].as_array())
            .and_then(|ms| ms.iter().find(|m| m["name"] == name))
            .cloned()
    };
    for (name, (pid, addr)) in children {
        let member = row(name);
        let role = member
            .as_ref()
            .and_then(|m| m["role"].as_str().map(crate::printable::printable))
            .or_else(|| {
                ready
                    .get(name)
                    .and_then(|r| r["role"].as_str().map(crate::printable::printable))
            })
            .unwrap_or_else(|| "?".into());
        let leader = if member.as_ref().is_some_and(|m| m["leader"] == true) {
            "*"
        } else {
            ""
        };
        let owns = member
            .as_ref()
            .and_then(|m| m["partitions"].as_array().map(|a| a.len().to_string()))
            .unwrap_or_else(|| "?".into());
        let api = apis
            .get(name)
            .map(|a| format!("http://{a}/status"))
            .unwrap_or_default();
        println!(
            "{:<6} {pid:>8}  {addr:<18} {api:<34} {:<7} {owns:>6}",
            format!("{name}{leader}"),
            role
        );
    }
    if let Some(api) = apis.values().next() {
        println!("\nDashboard: http://{api}/   (any node's API address serves one)");
    }
    if let Some((_, (pid, _))) = children.iter().next() {
        println!("\nTry: kill -9 {pid}   (and watch the cluster recover)\n");
    }
}

/// Resolves on Ctrl-C or, where their handlers could be installed, SIGTERM
/// or SIGHUP.
async fn stop_requested(
    term: &mut Option<tokio::signal::unix::Signal>,
    hangup: &mut Option<tokio::signal::unix::Signal>,
) {
    async fn received(signal: &mut Option<tokio::signal::unix::Signal>) {
        match signal {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = received(term) => {}
        _ = received(hangup) => {}
    }
}

/// Longer than a node's own leave timeout (revoke timeout + 2 s, 7 s by
/// default): a node still running after this is killed.
const STOP_STEP: Duration = Duration::from_secs(9);

/// Stops the nodes so that every leave finds a leader to commit it: the
/// members at once, then the voters one at a time, the leader last (see
/// [`next_to_stop`]). Stopped all at once, the leader and voters go first
/// and the rest wait out their leave timeouts with nobody to hear them.
async fn stop_in_order(
    children: &BTreeMap<String, (u32, String)>,
    apis: &BTreeMap<String, String>,
    live: &mut BTreeSet<String>,
    rx: &mut mpsc::UnboundedReceiver<Report>,
    feed: &mut Feed,
) {
    while !live.is_empty() {
        let status = tokio::task::block_in_place(|| {
            live.iter()
                .filter_map(|name| apis.get(name))
                .find_map(|api| fetch_status_within(api, Duration::from_millis(500)))
        });
        let batch = next_to_stop(live, status.as_ref());
        for name in &batch {
            if let Some((pid, _)) = children.get(name) {
                send_signal(*pid, "TERM");
            }
        }
        let mut deadline = tokio::time::Instant::now() + STOP_STEP;
        let mut killed = false;
        while batch.iter().any(|name| live.contains(name)) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Report::Exited { node, pid, status })) => {
                    live.remove(&node);
                    println!(
                        "[{:8.3}s] {node} (pid {pid}) stopped: {status}",
                        feed.started.elapsed().as_secs_f64()
                    );
                }
                Ok(Some(Report::Line { node, line })) => {
                    feed.show(&node, &line);
                }
                Ok(None) => return,
                Err(_) if !killed => {
                    for name in batch.iter().filter(|name| live.contains(*name)) {
                        println!("{name} did not leave within {STOP_STEP:?}; killing it");
                        if let Some((pid, _)) = children.get(name) {
                            send_signal(*pid, "KILL");
                        }
                    }
                    killed = true;
                    deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                }
                Err(_) => {
                    // Killed and still not reaped: give up on them.
                    for name in &batch {
                        live.remove(name);
                    }
                }
            }
        }
    }
}

/// The next nodes to stop, given those still running and one node's
/// `/status` (None if no node answered: then all of them). Nodes the status
/// does not list as voters (members, nodes that never joined) go first, all
/// at once; then one voter that does not lead; the leader last. Voters go
/// one at a time because each leave changes the voter set.
fn next_to_stop(live: &BTreeSet<String>, status: Option<&Value>) -> Vec<String> {
    let Some(members) = status.and_then(|s| s["members"].as_array()) else {
        return live.iter().cloned().collect();
    };
    let listed = |name: &str| members.iter().find(|m| m["name"] == name);
    let is_voter = |name: &str| listed(name).is_some_and(|m| m["role"] == "voter");
    let leads = |name: &str| listed(name).is_some_and(|m| m["leader"] == true);
    let plain: Vec<String> = live
        .iter()
        .filter(|n| !is_voter(n) && !leads(n))
        .cloned()
        .collect();
    if !plain.is_empty() {
        return plain;
    }
    match live.iter().find(|n| !leads(n)) {
        Some(voter) => vec![voter.clone()],
        None => live.iter().cloned().collect(),
    }
}

/// Sends `kill -<signal>` to one child (by PID: only processes we started).
fn send_signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn live(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn status() -> Value {
        json!({ "members": [
            { "name": "n1", "role": "voter", "leader": true },
            { "name": "n2", "role": "voter", "leader": false },
            { "name": "n3", "role": "member", "leader": false },
            { "name": "n4", "role": "voter", "leader": false },
            { "name": "n5", "role": "member", "leader": false },
        ]})
    }

    #[test]
    fn the_dev_secret_is_private_random_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, file) = write_secret().unwrap();
        let (other_dir, other) = write_secret().unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(dir.path()), 0o700);
        let secret = std::fs::read(&file).unwrap();
        assert_eq!(secret.len(), 2 * SECRET_BYTES);
        assert_ne!(secret, std::fs::read(&other).unwrap());
        drop((dir, other_dir));
        assert!(!file.exists() && !other.exists());
    }

    #[test]
    fn peer_strings_are_printed_bounded_and_without_control_characters() {
        let mut feed = Feed {
            names: HashMap::new(),
            recent: HashMap::new(),
            started: Instant::now(),
        };
        let name = format!("evil\u{1b}[2J{}", "x".repeat(10_000));
        let line = json!({ "type": "member_joined", "id": "7", "role": "member",
                           "info": { "name": name } })
        .to_string();
        let (text, event) = feed.shown("n1", &line);
        let text = text.expect("a joined line");
        assert!(event.is_some());
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(text.chars().count() <= MAX_LINE + 1, "{}", text.len());
        let (raw, _) = feed.shown("n1", "not json \u{7}\u{1b}]0;title\u{7}");
        assert!(!raw.unwrap().chars().any(char::is_control));
    }

    #[test]
    fn members_first_then_voters_one_by_one_then_the_leader() {
        let s = status();
        let all = live(&["n1", "n2", "n3", "n4", "n5"]);
        assert_eq!(next_to_stop(&all, Some(&s)), ["n3", "n5"]);
        assert_eq!(next_to_stop(&live(&["n1", "n2", "n4"]), Some(&s)), ["n2"]);
        assert_eq!(next_to_stop(&live(&["n1", "n4"]), Some(&s)), ["n4"]);
        assert_eq!(next_to_stop(&live(&["n1"]), Some(&s)), ["n1"]);
    }

    #[test]
    fn unlisted_nodes_go_first_and_no_status_means_all_at_once() {
        let s = status();
        // A node that never joined is not in the status: it goes with the members.
        let with_stranger = live(&["n1", "n2", "n9"]);
        assert_eq!(next_to_stop(&with_stranger, Some(&s)), ["n9"]);
        let all = live(&["n1", "n2", "n3"]);
        assert_eq!(next_to_stop(&all, None), ["n1", "n2", "n3"]);
        assert_eq!(next_to_stop(&all, Some(&json!({}))), ["n1", "n2", "n3"]);
    }
}

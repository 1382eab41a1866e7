//! The real `ringleader` binary: processes on loopback, every wait bounded.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The value of one counter or gauge on a node's /metrics.
fn metric(addr: &str, name: &str) -> Option<u64> {
    let (_, body) = http("GET", addr, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A one-node cluster of its own (its only seed is itself).
fn start_alone(name: &str, partitions: u32) -> Proc {
    let ports = free_ports(2);
    start(
        name,
        ports[0],
        ports[1],
        &format!("127.0.0.1:{}", ports[0]),
        partitions,
    )
}

/// Some((leader, owned total)) when every node's /status names the same
/// leader and the same members (exactly `procs`), and their /partitions add
/// up to every partition exactly once.
fn agreement(procs: &[&Proc], partitions: u32) -> Option<(String, usize)> {
    let mut leader = None;
    let mut members = None;
    let mut owned = std::collections::BTreeSet::new();
    for p in procs {
        let s = get_json(&p.http, "/status")?;
        let l = s["leader"].as_str()?.to_string();
        let mut m: Vec<String> = s["members"]
            .as_array()?
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect();
        m.sort();
        if m.len() != procs.len()
            || *leader.get_or_insert(l.clone()) != l
            || *members.get_or_insert(m.clone()) != m
        {
            return None;
        }
        for g in get_json(&p.http, "/partitions")?.as_array()? {
            if !owned.insert(g["partition"].as_u64()?) {
                return None;
            }
        }
    }
    (owned.len() == partitions as usize).then(|| (leader.unwrap_or_default(), owned.len()))
}

#[test]
fn bad_configuration_exits_2_naming_the_setting() {
    let out = Command::new(BIN)
        .args(["run", "--partitions", "0", "--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("partitions"), "{err}");

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["run", "--http", &addr, "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http"), "{err}");

    let out = Command::new(BIN)
        .args([
            "run",
            "--secret-file",
            "/nonexistent/secret",
            "--http",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret-file"));
}

#[test]
fn a_bad_seed_list_exits_2_with_one_line_naming_seeds() {
    for seeds in ["not an address,,", "127.0.0.1"] {
        let out = Command::new(BIN)
            .args(["run", "--http", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
            .args(["--seeds", seeds])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{seeds}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("seeds: "), "{err}");
        assert!(!err.contains("invalid configuration: invalid"), "{err}");
    }
}

/// A file in a directory of its own under the system temp directory.
fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ringleader-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, contents).unwrap();
    file
}

#[test]
fn a_node_reachable_beyond_loopback_needs_a_secret() {
    // Refused before anything binds: the advertised address need not exist.
    let out = Command::new(BIN)
        .args([
            "run",
            "--listen",
            "0.0.0.0:0",
            "--advertise",
            "10.1.2.3:7000",
        ])
        .args(["--http", "127.0.0.1:0"])
        .env_remove("RINGLEADER_SECRET_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--secret-file") && err.contains("RINGLEADER_SECRET_FILE"),
        "{err}"
    );
}

#[test]
fn ring_election_variables_configure_a_node() {
    let ports = free_ports(2);
    // PORT binds every interface: that needs a secret.
    let secret = temp_file("secret", b"ring-election-variables-test-secret\n");
    let child = Command::new(BIN)
        .arg("run")
        .env("RINGLEADER_SECRET_FILE", &secret)
        .env("PORT", ports[0].to_string())
        .env("RINGLEADER_ADVERTISE", format!("127.0.0.1:{}", ports[0]))
        .env("MONITORING_PORT", ports[1].to_string())
        .env("SEED_NODES", format!("127.0.0.1:{}", ports[0]))
        .env("NUM_PARTITIONS", "10")
        .env("LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let node = Proc {
        child,
        http: format!("127.0.0.1:{}", ports[1]),
    };
    wait_until("the node serves /status with 10 partitions", || {
        get_json(&node.http, "/status")
            .is_some_and(|s| s["num_partitions"] == 10 && s["leader"].is_string())
    });
}

#[test]
fn three_daemons_agree_survive_a_leader_kill_and_leave_on_sigterm() {
    // One reservation, so no port is handed out twice.
    let ports = free_ports(6);
    let (peers, https) = ports.split_at(3);
    let seeds = peers
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| start(&format!("d{i}"), peers[i], https[i], &seeds, 24))
        .collect();

    let mut agreed = None;
    wait_until("3 daemons agree on leader, members and ownership", || {
        agreed = agreement(&procs.iter().collect::<Vec<_>>(), 24);
        agreed.is_some()
    });
    let (leader, _) = agreed.unwrap();
    // A leader kill is survivable once the joiners have been promoted to
    // voters (until then the first node is the only one).
    wait_until("all three daemons are Raft voters", || {
        get_json(&procs[0].http, "/status").is_some_and(|s| {
            s["members"]
                .as_array()
                .is_some_and(|ms| ms.iter().filter(|m| m["role"] == "voter").count() == 3)
        })
    });

    // Every node maps the key to the same partition (a pure function of
    // the key), and their answers for its owner converge: agreement above
    // can hold while a rebalance is still in flight, and a node whose
    // table lags a commit names the partition's previous owner meanwhile.
    let lookup = || -> Vec<Value> {
        procs
            .iter()
            .map(|p| get_json(&p.http, "/v1/owner/user:42").unwrap())
            .collect()
    };
    assert!(
        lookup()
            .windows(2)
            .all(|w| w[0]["partition"] == w[1]["partition"])
    );
    wait_until("every node names the same owner for a key", || {
        lookup().windows(2).all(|w| w[0]["owner"] == w[1]["owner"])
    });

    // The dashboard page is served at the root.
    let h = &procs[0].http;
    let (code, page) = http("GET", h, "/").unwrap();
    assert_eq!(code, 200);
    assert!(
        page.contains("<title>ringleader dashboard</title>"),
        "{page}"
    );

    // Bad HTTP input gets 4xx JSON.
    for (method, path, code) in [
        ("GET", "/nope", 404),
        ("POST", "/status", 405),
        ("POST", "/v1/partitions/abc/release", 400),
        ("POST", "/v1/partitions/9999/release", 400),
    ] {
        let (status, body) = http(method, h, path).unwrap();
        assert_eq!(status, code, "{method} {path}: {body}");
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{method} {path} body {body:?}"));
        assert!(v["error"].is_string(), "{body}");
    }
    let long = format!("/v1/owner/{}", "k".repeat(5000));
    assert_eq!(http("GET", h, &long).unwrap().0, 400);
    assert_eq!(http("GET", h, "/livez").unwrap().0, 200);
    assert_eq!(http("GET", h, "/readyz").unwrap().0, 200);
    let (_, metrics) = http("GET", h, "/metrics").unwrap();
    for name in [
        "ringleader_partitions_owned",
        "ringleader_members",
        "ringleader_rebalances_total",
        "ringleader_handoffs_total",
        "ringleader_session_expirations_total",
        "ringleader_lease_renew_rtt_microseconds",
        "ringleader_frames_rejected_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from {metrics}");
    }

    // kill -9 the leader: the survivors agree on a new one and own everything.
    let pos = procs
        .iter()
        .position(|p| {
            get_json(&p.http, "/status")
                .is_some_and(|s| s["node"].as_str() == Some(leader.as_str()))
        })
        .unwrap();
    let dead = procs.remove(pos);
    drop(dead); // SIGKILL
    wait_until("survivors agree on a new leader", || {
        agreement(&procs.iter().collect::<Vec<_>>(), 24).is_some_and(|(l, _)| l != leader)
    });

    // A survivor's event stream tells the story in order: two leaderships,
    // numbered events, rising epochs.
    let story = read_sse_until(&procs[0].http, Some("0"), |events| {
        events
            .iter()
            .filter(|(_, e, _)| e == "leader_changed")
            .count()
            >= 2
    });
    let ids: Vec<u64> = story.iter().filter_map(|(id, _, _)| *id).collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids in order: {ids:?}"
    );
    let epochs: Vec<u128> = story
        .iter()
        .filter(|(_, e, _)| e == "leader_changed")
        .filter_map(|(_, _, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["epoch"].as_str().and_then(|e| e.parse::<u128>().ok()))
        .collect();
    assert!(
        epochs.len() >= 2 && epochs.windows(2).all(|w| w[1] > w[0]),
        "{epochs:?}"
    );

    let lost_total = |procs: &[Proc]| -> u64 {
        procs
            .iter()
            .filter_map(|p| http("GET", &p.http, "/metrics"))
            .flat_map(|(_, body)| {
                body.lines()
                    .filter(|l| l.starts_with("ringleader_partitions_lost_total "))
                    .filter_map(|l| l.split(' ').nth(1).and_then(|v| v.parse::<u64>().ok()))
                    .collect::<Vec<_>>()
            })
            .sum()
    };
    eprintln!(
        "partitions lost by survivors across the leader kill: {}",
        lost_total(&procs)
    );
    // What the node that stays has lost so far.
    let lost_before = lost_total(&procs[1..]);

    // SIGTERM on a member: it hands its partitions off and exits 0.
    let mut leaving = procs.remove(0);
    let pid = leaving.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = leaving.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "the node did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
    wait_until("the last node owns everything", || {
        agreement(&procs.iter().collect::<Vec<_>>(), 24).is_some()
    });
    // A graceful leave hands off: the survivor lost nothing over it.
    assert_eq!(
        lost_total(&procs),
        lost_before,
        "a graceful leave lost partitions"
    );
}

/// Reads server-sent events from `path` until `want` events with ids have
/// arrived (or the deadline passes); returns (id, event name, data).
fn read_sse(addr: &str, last_id: Option<&str>, want: usize) -> Vec<(Option<u64>, String, String)> {
    read_sse_until(addr, last_id, |events| events.len() >= want)
}

/// Reads server-sent events until `done` holds for what arrived (or the
/// deadline passes).
type Sse = Vec<(Option<u64>, String, String)>;
fn read_sse_until(addr: &str, last_id: Option<&str>, done: impl Fn(&Sse) -> bool) -> Sse {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let extra = last_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{extra}\r\n"
    )
    .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut raw = String::new();
    let mut buf = [0u8; 4096];
    let parse = |raw: &str| -> Vec<(Option<u64>, String, String)> {
        let mut out = Vec::new();
        for block in raw.split("\n\n") {
            let (mut id, mut event, mut data) = (None, None, None);
            for line in block.lines() {
                if let Some(v) = line
                    .strip_prefix("id: ")
                    .or_else(|| line.strip_prefix("id:"))
                {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line
                    .strip_prefix("event: ")
                    .or_else(|| line.strip_prefix("event:"))
                {
                    event = Some(v.trim().to_string());
                } else if let Some(v) = line
                    .strip_prefix("data: ")
                    .or_else(|| line.strip_prefix("data:"))
                {
                    data = Some(v.trim().to_string());
                }
            }
            if let (Some(e), Some(d)) = (event, data) {
                out.push((id, e, d));
            }
        }
        out
    };
    loop {
        let events = parse(&raw);
        if done(&events) || Instant::now() > deadline {
            return events;
        }
        match s.read(&mut buf) {
            Ok(0) => return parse(&raw),
            Ok(n) => raw.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
}

#[test]
fn events_stream_in_order_and_resume_from_last_event_id() {
    let node = start_alone("e0", 8);
    wait_until("the node is ready", || {
        http("GET", &node.http, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    // A fresh subscriber sees nothing old; one resuming from 0 gets all
    // buffered events, numbered 1, 2, 3... in order.
    let all = read_sse(&node.http, Some("0"), 3);
    assert!(all.len() >= 3, "{all:?}");
    let ids: Vec<u64> = all.iter().filter_map(|(id, _, _)| *id).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    let names: Vec<&str> = all.iter().map(|(_, e, _)| e.as_str()).collect();
    assert!(names.contains(&"leader_changed"), "{names:?}");
    for (_, name, data) in &all {
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"].as_str(), Some(name.as_str()));
    }
    // 64-bit values travel as strings (JavaScript-safe), with the sequence
    // number in the body as well.
    let assigned = all
        .iter()
        .find(|(_, e, _)| e == "partitions_assigned")
        .map(|(_, _, d)| serde_json::from_str::<Value>(d).unwrap())
        .expect("a partitions_assigned event");
    assert!(assigned["partitions"][0]["token"].is_string(), "{assigned}");
    assert!(assigned["seq"].is_u64(), "{assigned}");
    // Resuming after the first event replays the rest.
    let rest = read_sse(&node.http, Some("1"), all.len() - 1);
    assert_eq!(rest.first().and_then(|(id, _, _)| *id), Some(2));
    // An id from another life of the node: resync.
    let odd = read_sse(&node.http, Some("999999"), 1);
    assert_eq!(odd.first().map(|(_, e, _)| e.as_str()), Some("resync"));
}

#[test]
fn status_and_owner_commands_read_a_node() {
    let node = start_alone("q0", 8);
    wait_until("the node owns its partitions", || {
        get_json(&node.http, "/partitions")
            .is_some_and(|p| p.as_array().is_some_and(|a| a.len() == 8))
    });
    let url = format!("http://{}", node.http);
    let out = Command::new(BIN)
        .args(["status", "--node", &url])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("q0*") && text.contains("voter"), "{text}");
    let out = Command::new(BIN)
        .args(["owner", "user:42", "--node", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("-> q0"), "{text}");
    let out = Command::new(BIN)
        .args(["partition", "user:42", "--node", &url])
        .output()
        .unwrap();
    let p: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(p < 8);
    let out = Command::new(BIN)
        .args(["status", "--node", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_toml_file_configures_a_node_below_flags_and_environment() {
    let ports = free_ports(2);
    let dir = std::env::temp_dir().join(format!("ringleader-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"from-file\"\nlisten = \"127.0.0.1:{}\"\nhttp = \"127.0.0.1:{}\"\npartitions = 12\nseeds = [\"127.0.0.1:{}\"]\nauto-release = true\n",
            ports[0], ports[1], ports[0]
        ),
    )
    .unwrap();
    // The flag outranks the file's partition count.
    let child = Command::new(BIN)
        .args([
            "run",
            "--config",
            file.to_str().unwrap(),
            "--partitions",
            "6",
            "--log",
            "error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let node = Proc {
        child,
        http: format!("127.0.0.1:{}", ports[1]),
    };
    wait_until(
        "the node runs with the file's name and the flag's partitions",
        || {
            get_json(&node.http, "/status")
                .is_some_and(|s| s["name"] == "from-file" && s["num_partitions"] == 6)
        },
    );
    // An unknown key is a clear configuration error.
    std::fs::write(&file, "partitons = 3\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("partitons"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `n` consecutive ports, each free when checked (for `dev`, which numbers
/// its nodes' ports from a base).
fn free_range(n: u16) -> u16 {
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for _ in 0..200 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let base = 20_000 + (seed >> 33) as u16 % 30_000;
        let held: Vec<TcpListener> = (0..n)
            .filter_map(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports on loopback");
}

/// The PIDs of a process's children (every thread's), from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// `ringleader dev` and the nodes it started, all killed by PID if the test
/// ends early (the nodes run in process groups of their own).
struct Dev {
    child: Child,
    nodes: Vec<u32>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        for pid in &self.nodes {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn dev_stops_its_cluster_in_an_order_every_leave_is_heard() {
    const NODES: u16 = 4;
    // One range for both, so the two cannot overlap.
    let peer = free_range(2 * NODES);
    let http_base = peer + NODES;
    let mut dev = Dev {
        child: Command::new(BIN)
            .args(["dev", "--nodes", &NODES.to_string(), "--partitions", "16"])
            .args(["--base-port", &peer.to_string()])
            .args(["--http-base-port", &http_base.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringleader dev"),
        nodes: Vec::new(),
    };
    // Drain both pipes so that nothing blocks on a full one.
    let mut out = dev.child.stdout.take().unwrap();
    let mut err = dev.child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let pid = dev.child.id();
    wait_until("dev started its nodes", || {
        dev.nodes = children_of(pid);
        dev.nodes.len() == usize::from(NODES)
    });
    // Every node got the secret file dev wrote: private, 64 hex characters.
    let secret_of = |pid: &u32| -> Option<std::path::PathBuf> {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let at = args.iter().position(|a| *a == b"--secret-file")?;
        Some(std::path::PathBuf::from(
            String::from_utf8_lossy(args.get(at + 1)?).into_owned(),
        ))
    };
    let secrets: Vec<std::path::PathBuf> = dev.nodes.iter().filter_map(secret_of).collect();
    assert_eq!(
        secrets.len(),
        usize::from(NODES),
        "every node has --secret-file"
    );
    assert!(secrets.windows(2).all(|w| w[0] == w[1]), "{secrets:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&secrets[0]).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 64);
    }
    let api = |i: u16| format!("127.0.0.1:{}", http_base + i);
    wait_until(
        "every node sees all members, two of them voters besides the leader",
        || {
            (0..NODES).all(|i| {
                get_json(&api(i), "/status").is_some_and(|s| {
                    s["members"].as_array().is_some_and(|ms| {
                        ms.len() == usize::from(NODES)
                            && ms.iter().filter(|m| m["role"] == "voter").count() == 3
                    })
                })
            })
        },
    );

    let members = get_json(&api(0), "/status").unwrap()["members"].clone();
    let with = |pred: &dyn Fn(&Value) -> bool| -> Vec<String> {
        let ms = members.as_array().unwrap();
        ms.iter()
            .filter(|m| pred(m))
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect()
    };
    let leader = with(&|m| m["leader"] == true);
    let mut plain = with(&|m| m["role"] != "voter");
    plain.sort();
    assert_eq!(leader.len(), 1, "{members}");

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "dev did not stop within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(
        status.success(),
        "dev exited with {status}\n{stdout}\n{stderr}"
    );
    // Every node left with the cluster's acknowledgement, on its own.
    assert!(
        !stderr.contains("without the cluster's acknowledgement"),
        "a node left unheard:\n{stderr}"
    );
    assert!(
        !stdout.contains("killing it"),
        "a node was killed:\n{stdout}"
    );
    assert_eq!(
        stdout.matches("stopped: exit status: 0").count(),
        usize::from(NODES),
        "{stdout}"
    );
    // The order: the members first, the leader last.
    let stopped: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" stopped: "))
        .filter_map(|l| l.split("] ").nth(1)?.split(' ').next())
        .collect();
    assert_eq!(stopped.len(), usize::from(NODES), "{stdout}");
    assert_eq!(
        stopped.last().copied(),
        Some(leader[0].as_str()),
        "{stdout}"
    );
    let mut first: Vec<&str> = stopped[..plain.len()].to_vec();
    first.sort_unstable();
    assert_eq!(first, plain, "{stdout}");
    assert!(!secrets[0].exists(), "dev removed its secret");
    for node in std::mem::take(&mut dev.nodes) {
        assert!(
            !std::path::Path::new(&format!("/proc/{node}")).exists()
                || std::fs::read_to_string(format!("/proc/{node}/stat"))
                    .is_ok_and(|s| s.contains(") Z")),
            "node {node} is still running"
        );
    }
}

/// A node whose stdout pipe is never read (full at once: its first
/// assignment event alone outgrows the pipe) stays alive and in its cluster
/// while another member joins and dies over and over; the events it could
/// not write are dropped and counted.
#[test]
fn a_node_whose_stdout_is_never_read_stays_in_its_cluster() {
    const P: u32 = 4096;
    let ports = free_ports(6);
    let (peers, https) = ports.split_at(3);
    let seeds = format!("127.0.0.1:{},127.0.0.1:{}", peers[0], peers[1]);
    // One voter: the leader is the first seed; the stuck node is a plain
    // member that must keep heartbeating to stay in.
    let one_voter = ["--voters", "1", "--event-queue-lines", "8"];
    let leader = start_with(
        "y",
        peers[0],
        https[0],
        &seeds,
        P,
        &one_voter,
        Stdio::null(),
    );
    // Piped and never read: the pipe stays open and fills up.
    let stuck = start_with(
        "x",
        peers[1],
        https[1],
        &seeds,
        P,
        &one_voter,
        Stdio::piped(),
    );
    wait_until("x and y agree", || {
        agreement(&[&leader, &stuck], P).is_some()
    });
    let mut rounds = 0;
    while rounds < 3 || metric(&stuck.http, "ringleader_events_dropped_total").unwrap_or(0) == 0 {
        assert!(rounds < 10, "no event was dropped after {rounds} rounds");
        rounds += 1;
        let churn = start_with(
            "z",
            peers[2],
            https[2],
            &seeds,
            P,
            &one_voter,
            Stdio::null(),
        );
        wait_until("z joins and gets its share", || {
            agreement(&[&leader, &stuck, &churn], P).is_some()
        });
        drop(churn); // SIGKILL
        wait_until("x and y own everything again", || {
            agreement(&[&leader, &stuck], P).is_some()
        });
        assert_eq!(http("GET", &stuck.http, "/livez").map(|r| r.0), Some(200));
    }
}

/// With its stdout reader gone (writes fail with EPIPE), a node keeps
/// auto-releasing: a joining node gets its partitions long before the 60 s
/// revoke deadline would have handed them over without a release.
#[test]
fn auto_release_works_with_a_closed_stdout() {
    let ports = free_ports(4);
    let seeds = format!("127.0.0.1:{}", ports[0]);
    let slow_revoke = ["--revoke-timeout-ms", "60000"];
    let mut first = start_with(
        "a",
        ports[0],
        ports[1],
        &seeds,
        16,
        &slow_revoke,
        Stdio::piped(),
    );
    drop(first.child.stdout.take()); // the reader exits
    wait_until("a owns every partition", || {
        get_json(&first.http, "/partitions")
            .is_some_and(|p| p.as_array().is_some_and(|a| a.len() == 16))
    });
    let second = start_with(
        "b",
        ports[2],
        ports[3],
        &seeds,
        16,
        &slow_revoke,
        Stdio::null(),
    );
    // DEADLINE (40 s) is below the revoke timeout: only releases move them.
    wait_until("b gets half of the partitions", || {
        agreement(&[&first, &second], 16).is_some()
            && get_json(&second.http, "/partitions")
                .is_some_and(|p| p.as_array().is_some_and(|a| a.len() == 8))
    });
    // a's event output did fail, and a kept running.
    assert!(metric(&first.http, "ringleader_events_dropped_total").unwrap_or(0) > 0);
}

/// Reads from `s` until the server closes it (true), or the deadline passes
/// (false). Whatever the server sends first (a response) is skipped.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true, // reset
        }
    }
    false
}

/// Slowloris (a partial request line, then nothing), a silent connection
/// and an idle keep-alive connection are all closed by the server after the
/// header timeout; an event stream open all the while is not.
#[test]
fn slow_and_idle_http_connections_are_closed_but_event_streams_are_not() {
    let ports = free_ports(2);
    let node = start_with(
        "h0",
        ports[0],
        ports[1],
        &format!("127.0.0.1:{}", ports[0]),
        4,
        &["--http-header-timeout-ms", "1000"],
        Stdio::null(),
    );
    wait_until("the node is ready", || {
        http("GET", &node.http, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    let mut events = TcpStream::connect(&node.http).unwrap();
    write!(
        events,
        "GET /v1/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 0\r\n\r\n"
    )
    .unwrap();

    let mut slow = TcpStream::connect(&node.http).unwrap();
    slow.write_all(b"GET /status HTT").unwrap();
    assert!(
        closed_by_server(&mut slow),
        "a slowloris connection stayed open"
    );

    let mut silent = TcpStream::connect(&node.http).unwrap();
    assert!(
        closed_by_server(&mut silent),
        "a silent connection stayed open"
    );

    // An oversized request head is refused, not buffered.
    let mut big = TcpStream::connect(&node.http).unwrap();
    let filler = "a".repeat(100 * 1024);
    let _ = write!(
        big,
        "GET /livez HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    // 431, or a reset that outran it (the server closes with our bytes unread).
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );

    let mut idle = TcpStream::connect(&node.http).unwrap();
    write!(idle, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(
        closed_by_server(&mut idle),
        "an idle keep-alive connection stayed open"
    );

    // Several header timeouts later, the stream is still open and has
    // delivered the replayed events.
    events
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match events.read(&mut buf) {
            Ok(0) => panic!("the event stream was closed"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break, // nothing more for now: still open
        }
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("event: leader_changed"), "{got}");
}

/// Under an open-file limit of 256, 300 idle HTTP connections take at most
/// the HTTP share of descriptors: the node stays in its cluster, a new node
/// joins through it, and /livez answers again as the server closes idle
/// connections (the test keeps its ends open).
#[test]
fn idle_http_connections_beyond_the_limit_leave_the_peers_alone() {
    let mut ports = free_ports(6);
    // The lowest seed creates the cluster: a or b, not c, which comes later.
    ports[..3].sort_unstable();
    let (peers, https) = ports.split_at(3);
    let seeds = peers
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let spawn = |i: usize, name: &str, limited: bool| -> Proc {
        let mut cmd = if limited {
            let mut sh = Command::new("sh");
            sh.args(["-c", "ulimit -n 256 && exec \"$0\" \"$@\"", BIN]);
            sh
        } else {
            Command::new(BIN)
        };
        let child = cmd
            .args(["run", "--name", name, "--auto-release"])
            .args(["--listen", &format!("127.0.0.1:{}", peers[i])])
            .args(["--http", &format!("127.0.0.1:{}", https[i])])
            .args(["--seeds", &seeds, "--partitions", "12"])
            .args(["--http-header-timeout-ms", "2000"])
            .args(["--log", "error,openraft=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Proc {
            child,
            http: format!("127.0.0.1:{}", https[i]),
        }
    };
    let mut limited = spawn(0, "a", true);
    let mut other = spawn(1, "b", false);
    wait_until("a and b agree", || {
        // Report an early exit (a port taken meanwhile, say) as such.
        for p in [&mut limited, &mut other] {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("{} exited: {status}", p.http);
            }
        }
        agreement(&[&limited, &other], 12).is_some()
    });

    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(&limited.http).ok())
        .collect();
    assert_eq!(flood.len(), 300);
    let late = spawn(2, "c", false);
    wait_until("c joins while a's HTTP port is flooded", || {
        get_json(&other.http, "/status").is_some_and(|s| {
            s["members"]
                .as_array()
                .is_some_and(|ms| ms.len() == 3 && ms.iter().all(|m| m["alive"] == true))
        })
    });
    wait_until("a answers /livez again", || {
        http("GET", &limited.http, "/livez").is_some_and(|(s, _)| s == 200)
    });
    wait_until("all three agree", || {
        agreement(&[&limited, &other, &late], 12).is_some()
    });
    drop(flood);
}

//! Helpers shared by the tests of the real binary: processes on loopback,
//! killed by PID when dropped, and every wait bounded.
#![allow(dead_code)] // each test crate uses its own share of these

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(40);
pub const BIN: &str = env!("CARGO_BIN_EXE_ringleader");

/// A child process killed (by PID) when dropped.
pub struct Proc {
    pub child: Child,
    pub http: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// A minimal HTTP/1.1 request; returns (status, body).
pub fn http(method: &str, addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    // Bodies here are small; undo chunked encoding if present.
    let body = if raw
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.lines().skip(1).step_by(2).collect::<Vec<_>>().join("")
    } else {
        body
    };
    Some((status, body))
}

pub fn get_json(addr: &str, path: &str) -> Option<Value> {
    let (status, body) = http("GET", addr, path)?;
    if status != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

pub fn wait_until<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn start(name: &str, peer: u16, http_port: u16, seeds: &str, partitions: u32) -> Proc {
    start_with(name, peer, http_port, seeds, partitions, &[], Stdio::null())
}

/// `start` with extra flags and a chosen stdout.
pub fn start_with(
    name: &str,
    peer: u16,
    http_port: u16,
    seeds: &str,
    partitions: u32,
    extra: &[&str],
    stdout: Stdio,
) -> Proc {
    let child = Command::new(BIN)
        .args(["run", "--name", name])
        .args(["--listen", &format!("127.0.0.1:{peer}")])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args([
            "--seeds",
            seeds,
            "--partitions",
            &partitions.to_string(),
            "--auto-release",
        ])
        .args(["--log", "error,openraft=off"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ringleader");
    Proc {
        child,
        http: format!("127.0.0.1:{http_port}"),
    }
}

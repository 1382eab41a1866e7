//! `ringleader status`, `owner KEY` and `partition KEY`: ask a node's HTTP API.

use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use crate::printable::field;

/// Where to ask, and how to print.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The node's HTTP API (default: RINGLEADER_NODE or http://127.0.0.1:9000).
    #[arg(long, env = "RINGLEADER_NODE", default_value = "http://127.0.0.1:9000")]
    pub node: String,
    /// Print the node's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn fetch(base: &str, path: &str) -> Result<Value, String> {
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let base = if url.starts_with("http://") || url.starts_with("https://") {
        url
    } else {
        format!("http://{url}")
    };
    match ureq::get(&base)
        .timeout(std::time::Duration::from_secs(5))
        .call()
    {
        Ok(resp) => resp
            .into_json::<Value>()
            .map_err(|e| format!("{base}: not JSON: {e}")),
        Err(ureq::Error::Status(code, resp)) => {
            let body = resp.into_string().unwrap_or_default();
            let body = crate::printable::clean(&body, crate::printable::MAX_LINE);
            Err(format!("{base}: HTTP {code}: {body}"))
        }
        Err(e) => Err(format!("{base}: {e}")),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("ringleader: {message}");
    ExitCode::from(1)
}

/// `ringleader status`.
pub fn status(args: QueryArgs) -> ExitCode {
    let s = match fetch(&args.node, "/status") {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if args.json {
        println!("{s:#}");
        return ExitCode::SUCCESS;
    }
    let name_of = |id: &Value| {
        s["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| &m["id"] == id))
            .map_or_else(|| "-".to_string(), |m| field(&m["name"], "-"))
    };
    println!(
        "cluster {}  leader {}  epoch {}  index {}  partitions {}",
        field(&s["cluster"], "?"),
        name_of(&s["leader"]),
        field(&s["epoch"], "?"),
        s["index"],
        s["num_partitions"]
    );
    println!(
        "\n{:<12} {:<22} {:<22} {:<7} {:<6} {:>5}",
        "NAME", "PEER", "HTTP", "ROLE", "ALIVE", "OWNS"
    );
    for m in s["members"].as_array().into_iter().flatten() {
        let leader = if m["leader"].as_bool() == Some(true) {
            "*"
        } else {
            ""
        };
        println!(
            "{:<12} {:<22} {:<22} {:<7} {:<6} {:>5}",
            format!("{}{leader}", field(&m["name"], "?")),
            field(&m["peer_addr"], "-"),
            field(&m["http_addr"], "-"),
            field(&m["role"], "?"),
            m["alive"],
            m["partitions"].as_array().map_or(0, Vec::len),
        );
    }
    ExitCode::SUCCESS
}

/// `ringleader owner KEY` / `ringleader partition KEY`.
pub fn owner(args: QueryArgs, key: &str, partition_only: bool) -> ExitCode {
    // Keys go in the path: percent-encode everything but unreserved bytes.
    let encoded: String = key
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let path = if partition_only { "partition" } else { "owner" };
    let answer = match fetch(&args.node, &format!("/v1/{path}/{encoded}")) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    if args.json {
        println!("{answer:#}");
    } else if partition_only {
        println!("{}", answer["partition"]);
    } else {
        println!(
            "key {:?} -> partition {} -> {} ({}) token {}",
            key,
            answer["partition"],
            field(&answer["owner_name"], "nobody"),
            field(&answer["owner_http_addr"], "-"),
            field(&answer["token"], "-"),
        );
    }
    ExitCode::SUCCESS
}

//! `ringleader run`: one node in the foreground.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ringleader::config::is_loopback;
use ringleader::{Event, Node, NodeConfig, Timings};
use serde_json::{Value, json};

/// Settings of `ringleader run`. Every flag can also be given through the
/// environment variable named in its help; ring-election's variable names
/// (`SEED_NODES`, `NUM_PARTITIONS`, `PORT`, `HEART_BEAT_FREQUENCY`,
/// `LOG_LEVEL`) are honoured when the flag and the `RINGLEADER_*` variable
/// are absent.
#[derive(Debug, Args)]
// `--partitions -1` is a bad value for --partitions, not an unknown flag.
#[command(allow_negative_numbers = true)]
pub struct RunArgs {
    /// Node name (default: generated).
    #[arg(long, env = "RINGLEADER_NAME")]
    pub name: Option<String>,
    /// Peer listen address HOST:PORT (ring-election: PORT).
    #[arg(long, env = "RINGLEADER_LISTEN")]
    pub listen: Option<String>,
    /// HTTP API address HOST:PORT (ring-election: MONITORING_PORT).
    #[arg(long, env = "RINGLEADER_HTTP")]
    pub http: Option<String>,
    /// Address peers use to reach this node (default: the listen address).
    #[arg(long, env = "RINGLEADER_ADVERTISE")]
    pub advertise: Option<String>,
    /// Seed peers, comma separated HOST:PORT (ring-election: SEED_NODES).
    #[arg(long, env = "RINGLEADER_SEEDS", value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// Number of partitions (ring-election: NUM_PARTITIONS).
    #[arg(long, env = "RINGLEADER_PARTITIONS")]
    pub partitions: Option<u32>,
    /// Cluster name; peers of other clusters are refused.
    #[arg(long, env = "RINGLEADER_CLUSTER")]
    pub cluster: Option<String>,
    /// File holding the shared cluster secret: its raw bytes, ASCII whitespace
    /// at both ends trimmed, at least 16 bytes.
    #[arg(long, env = "RINGLEADER_SECRET_FILE")]
    pub secret_file: Option<std::path::PathBuf>,
    /// Most HTTP API connections served at once (default 512; also at most
    /// half of the open-file limit left after 64, so peers keep theirs).
    /// Further clients wait in the listen backlog.
    #[arg(long, env = "RINGLEADER_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// Time an HTTP client has to send a request's headers, and that an
    /// idle keep-alive connection stays open, in ms (default 10000).
    #[arg(long, env = "RINGLEADER_HTTP_HEADER_TIMEOUT_MS")]
    pub http_header_timeout_ms: Option<u64>,
    /// File holding the HTTP API token (at least 16 visible ASCII bytes;
    /// ASCII whitespace at both ends trimmed). With it, write endpoints
    /// need `Authorization: Bearer <token>`; without it, they accept
    /// writes from loopback peers only.
    #[arg(long, env = "RINGLEADER_API_TOKEN_FILE")]
    pub api_token_file: Option<std::path::PathBuf>,
    /// PEM certificate chain of this node for mutual TLS between peers (with
    /// --tls-key and --tls-ca). Its subject alternative names must include
    /// the advertised host; see docs/security.md.
    #[arg(long, env = "RINGLEADER_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "RINGLEADER_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM certificate(s) of the cluster CA: peers must present a
    /// certificate it signed.
    #[arg(long, env = "RINGLEADER_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Target number of Raft voters: 1, 3, 5 or 7 (default 5: five from
    /// five live nodes, three from three, one alone).
    #[arg(long, env = "RINGLEADER_VOTERS")]
    pub voters: Option<usize>,
    /// Directory for this node's identity and Raft state (created if
    /// missing; one node per directory). A node restarted with it resumes
    /// as the same node and voter. Without it the node is ephemeral: a
    /// restart is a new node.
    #[arg(long, env = "RINGLEADER_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Member heartbeat interval in ms (ring-election: HEART_BEAT_FREQUENCY).
    #[arg(long, env = "RINGLEADER_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Session timeout in ms: a member silent this long is removed.
    #[arg(long, env = "RINGLEADER_SESSION_TIMEOUT_MS")]
    pub session_timeout_ms: Option<u64>,
    /// Lease in ms: how long an acknowledged heartbeat lets this node act on
    /// its partitions (at most the session timeout).
    #[arg(long, env = "RINGLEADER_LEASE_MS")]
    pub lease_ms: Option<u64>,
    /// How long an owner has to release a partition being moved, in ms.
    #[arg(long, env = "RINGLEADER_REVOKE_TIMEOUT_MS")]
    pub revoke_timeout_ms: Option<u64>,
    /// Raft heartbeat (the leader's quorum confirmation) in ms, default 50.
    /// One AppendEntries call, connect included, must finish within it: on
    /// slow links raise it together with the election timeout.
    #[arg(long, env = "RINGLEADER_RAFT_HEARTBEAT_MS")]
    pub raft_heartbeat_ms: Option<u64>,
    /// Raft election timeout range in ms as MIN-MAX, default 150-200; must
    /// be above the Raft heartbeat. Leader failover takes about MAX + MIN..MAX.
    #[arg(long, env = "RINGLEADER_ELECTION_TIMEOUT_MS", value_parser = parse_range)]
    pub election_timeout_ms: Option<(u64, u64)>,
    /// Release revoked partitions at once instead of waiting for an
    /// application to do it (for nodes with no application attached, such
    /// as `ringleader dev`).
    #[arg(long, env = "RINGLEADER_AUTO_RELEASE")]
    pub auto_release: bool,
    /// How many event lines may wait for stdout; past that they are dropped
    /// and counted (`ringleader_events_dropped_total`). For tests.
    #[arg(long, hide = true, default_value_t = crate::output::DEFAULT_QUEUE)]
    pub event_queue_lines: usize,
    /// Log format: text or json.
    #[arg(long, env = "RINGLEADER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or ringleader=debug (ring-election: LOG_LEVEL; also RUST_LOG).
    #[arg(long, env = "RINGLEADER_LOG")]
    pub log: Option<String>,
    /// How long a graceful leave may take on SIGTERM/SIGINT, in ms
    /// (default: the revoke timeout plus 2 s).
    #[arg(long, env = "RINGLEADER_LEAVE_TIMEOUT_MS")]
    pub leave_timeout_ms: Option<u64>,
    /// A TOML file with any of these settings (keys as the flags, e.g.
    /// `seeds = ["h1:7000", "h2:7000"]`, `session-timeout-ms = 1000`).
    /// Precedence: flag > environment > file > default.
    #[arg(long, env = "RINGLEADER_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

/// The settings a `--config` TOML file may hold.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    name: Option<String>,
    listen: Option<String>,
    http: Option<String>,
    advertise: Option<String>,
    seeds: Option<Vec<String>>,
    partitions: Option<u32>,
    cluster: Option<String>,
    secret_file: Option<std::path::PathBuf>,
    tls_cert: Option<std::path::PathBuf>,
    tls_key: Option<std::path::PathBuf>,
    tls_ca: Option<std::path::PathBuf>,
    api_token_file: Option<std::path::PathBuf>,
    http_max_connections: Option<usize>,
    http_header_timeout_ms: Option<u64>,
    voters: Option<usize>,
    data_dir: Option<std::path::PathBuf>,
    heartbeat_ms: Option<u64>,
    session_timeout_ms: Option<u64>,
    lease_ms: Option<u64>,
    revoke_timeout_ms: Option<u64>,
    raft_heartbeat_ms: Option<u64>,
    #[serde(default, deserialize_with = "range_from_str")]
    election_timeout_ms: Option<(u64, u64)>,
    auto_release: Option<bool>,
    log_format: Option<String>,
    log: Option<String>,
    leave_timeout_ms: Option<u64>,
}

/// Reads `--config`, if given.
fn read_file(args: &RunArgs) -> anyhow::Result<FileConfig> {
    let Some(path) = &args.config else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("config: cannot read {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}", toml_error(path, &text, &e)))
}

/// A TOML error on one line: `config: FILE:LINE:COLUMN: message`.
fn toml_error(path: &std::path::Path, text: &str, e: &toml::de::Error) -> String {
    let at = e
        .span()
        .map(|span| {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
            format!(":{line}:{column}")
        })
        .unwrap_or_default();
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    format!(
        "config: {}{at}: {}",
        path.display(),
        crate::printable::clean(&message, 1000)
    )
}

/// Fills every setting that no flag and no environment variable (ours or
/// ring-election's) gave, from the file: flag > environment > file > default.
fn with_file(mut args: RunArgs, file: FileConfig) -> RunArgs {
    // (field, the ring-election or standard variable that outranks the file)
    macro_rules! fill {
        ($($f:ident $(/ $env:literal)*),* $(,)?) => {
            $(
                let outranked = false $(|| legacy($env).is_some())*;
                if args.$f.is_none() && !outranked {
                    args.$f = file.$f;
                }
            )*
        };
    }
    fill!(
        name,
        listen / "PORT",
        http / "MONITORING_PORT",
        advertise,
        seeds / "SEED_NODES",
        partitions / "NUM_PARTITIONS",
        cluster,
        secret_file,
        tls_cert,
        tls_key,
        tls_ca,
        api_token_file,
        http_max_connections,
        http_header_timeout_ms,
        voters,
        data_dir,
        heartbeat_ms / "HEART_BEAT_FREQUENCY",
        session_timeout_ms / "HEART_BEAT_CHECK_FREQUENCY",
        lease_ms,
        revoke_timeout_ms,
        raft_heartbeat_ms,
        election_timeout_ms,
        log_format,
        log / "RUST_LOG" / "LOG_LEVEL",
        leave_timeout_ms,
    );
    args.auto_release = args.auto_release || file.auto_release.unwrap_or(false);
    args
}

/// Parses `MIN-MAX` milliseconds, e.g. `150-200`.
fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (min, max) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: expected MIN-MAX in ms, e.g. 150-200"))?;
    let num = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|e| format!("{text:?}: {s:?}: {e}"))
    };
    let (min, max) = (num(min)?, num(max)?);
    if min >= max {
        return Err(format!("{text:?}: MIN must be below MAX"));
    }
    Ok((min, max))
}

/// Reads `election-timeout-ms = "150-200"` from the config file.
fn range_from_str<'de, D>(deserializer: D) -> Result<Option<(u64, u64)>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = <Option<String> as serde::Deserialize>::deserialize(deserializer)?;
    text.map(|t| parse_range(&t).map_err(serde::de::Error::custom))
        .transpose()
}

fn legacy(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Parses a ring-election variable standing for `setting`.
fn parse_legacy<T: std::str::FromStr>(
    setting: &'static str,
    name: &'static str,
) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match legacy(name) {
        None => Ok(None),
        Some(v) => v.trim().parse::<T>().map(Some).map_err(|e| {
            anyhow::anyhow!("{setting}: {name}={:?}: {e}", crate::printable::bounded(&v))
        }),
    }
}

/// Longest accepted duration setting, in ms: one hour. Longer ones are
/// mistakes (and u64::MAX ms overflows instant arithmetic).
pub const MAX_MS: u64 = 3_600_000;

/// `ms` as a duration, if within 1 ms to [`MAX_MS`].
fn millis(setting: &str, ms: u64) -> anyhow::Result<Duration> {
    if ms == 0 || ms > MAX_MS {
        anyhow::bail!("{setting}: {ms} ms: must be 1 ms to 1 hour ({MAX_MS} ms)");
    }
    Ok(Duration::from_millis(ms))
}

/// Checks that `addr` is `HOST:PORT`: a host name or IPv4 address, or an
/// IPv6 address in brackets, then a decimal port (not 0 unless
/// `port_zero`, which asks the system for a free one).
fn check_addr(addr: &str, port_zero: bool) -> Result<(), String> {
    let shown = crate::printable::bounded(addr);
    if addr.is_empty() {
        return Err("an empty entry; expected HOST:PORT".into());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{shown:?} has no port; expected HOST:PORT"));
    };
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        }
    };
    if !host_ok {
        return Err(format!(
            "{shown:?}: expected HOST:PORT (a host name, an IPv4 address or [IPv6])"
        ));
    }
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| port_zero || p != 0);
    if !port_ok {
        let range = if port_zero { "0" } else { "1" };
        return Err(format!("{shown:?}: the port must be {range} to 65535"));
    }
    Ok(())
}

/// Builds the node configuration: flag > RINGLEADER_* > ring-election name > default.
pub fn config_from(args: &RunArgs) -> anyhow::Result<NodeConfig> {
    let mut config = NodeConfig {
        name: args.name.clone(),
        advertise: args.advertise.clone(),
        ..NodeConfig::default()
    };
    if let Some(cluster) = &args.cluster {
        config.cluster = cluster.clone();
    }
    if let Some(voters) = args.voters {
        config.voters = voters;
    }
    config.data_dir = args.data_dir.clone();
    config.listen = match (&args.listen, parse_legacy::<u16>("listen", "PORT")?) {
        (Some(listen), _) => listen.clone(),
        (None, Some(port)) => format!("0.0.0.0:{port}"),
        (None, None) => "127.0.0.1:7000".to_string(),
    };
    check_addr(&config.listen, true).map_err(|e| anyhow::anyhow!("listen: {e}"))?;
    if let Some(advertise) = &config.advertise {
        check_addr(advertise, false).map_err(|e| anyhow::anyhow!("advertise: {e}"))?;
    }
    if config.advertise.is_none() && config.listen.starts_with("0.0.0.0:") {
        anyhow::bail!(
            "listen: {} binds every interface; also give --advertise HOST:PORT so peers know where to reach this node",
            config.listen
        );
    }
    let http = match (&args.http, parse_legacy::<u16>("http", "MONITORING_PORT")?) {
        (Some(http), _) => http.clone(),
        (None, Some(port)) => format!("0.0.0.0:{port}"),
        (None, None) => "127.0.0.1:9000".to_string(),
    };
    check_addr(&http, true).map_err(|e| anyhow::anyhow!("http: {e}"))?;
    config.http_addr = Some(http);
    config.seeds = match &args.seeds {
        Some(seeds) => seeds.iter().map(|s| s.trim().to_string()).collect(),
        None => legacy("SEED_NODES")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default(),
    };
    for (i, seed) in config.seeds.iter().enumerate() {
        check_addr(seed, false).map_err(|e| anyhow::anyhow!("seeds: entry {}: {e}", i + 1))?;
    }
    if let Some(p) = args
        .partitions
        .or(parse_legacy("partitions", "NUM_PARTITIONS")?)
    {
        config.num_partitions = p;
    }
    let mut timings = Timings::default();
    if let Some(ms) = args
        .heartbeat_ms
        .or(parse_legacy("heartbeat-ms", "HEART_BEAT_FREQUENCY")?)
    {
        timings.heartbeat = millis("heartbeat-ms", ms)?;
    }
    // ring-election's heart check is its failure detector: our session timeout.
    if let Some(ms) = args.session_timeout_ms.or(parse_legacy(
        "session-timeout-ms",
        "HEART_BEAT_CHECK_FREQUENCY",
    )?) {
        timings.session_timeout = millis("session-timeout-ms", ms)?;
        timings.lease = timings.lease.min(timings.session_timeout);
    }
    if let Some(ms) = args.lease_ms {
        timings.lease = millis("lease-ms", ms)?;
    }
    if let Some(ms) = args.revoke_timeout_ms {
        timings.revoke_timeout = millis("revoke-timeout-ms", ms)?;
    }
    if let Some(ms) = args.raft_heartbeat_ms {
        timings.raft_heartbeat = millis("raft-heartbeat-ms", ms)?;
    }
    if let Some((min, max)) = args.election_timeout_ms {
        timings.election_timeout_min = millis("election-timeout-ms", min)?;
        timings.election_timeout_max = millis("election-timeout-ms", max)?;
    }
    config.timings = timings;
    if let Some(ms) = args.leave_timeout_ms {
        if !(100..=MAX_MS).contains(&ms) {
            anyhow::bail!("leave-timeout-ms: {ms} ms: must be 100 ms to 1 hour ({MAX_MS} ms)");
        }
    }
    if let Some(path) = &args.secret_file {
        let raw = std::fs::read(path)
            .with_context(|| format!("secret-file: cannot read {}", path.display()))?;
        let secret = secret_bytes(&raw)
            .map_err(|e| anyhow::anyhow!("secret-file: {}: {e}", path.display()))?;
        let secret = ringleader::transport::handshake::Secret::new(secret)
            .map_err(|e| anyhow::anyhow!("secret-file: {}: {e}", path.display()))?;
        config.secret = Some(secret);
    }
    config.tls = tls_from(args)?;
    check_peer_auth(&config)?;
    match config.validate() {
        // The caller says "invalid configuration"; the setting and the reason are ours.
        Err(ringleader::Error::Config { setting, reason }) => {
            anyhow::bail!("{setting}: {reason}")
        }
        Err(e) => return Err(e.into()),
        Ok(()) => {}
    }
    Ok(config)
}

/// Mutual TLS from --tls-cert, --tls-key and --tls-ca: all three or none.
fn tls_from(args: &RunArgs) -> anyhow::Result<Option<ringleader::transport::tls::TlsConfig>> {
    match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => {
            ringleader::transport::tls::TlsConfig::from_pem_files(cert, key, ca)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
        _ => anyhow::bail!("tls: give all of --tls-cert, --tls-key and --tls-ca, or none"),
    }
}

/// Whether peers must authenticate: some address this node listens on,
/// advertises or seeds from is not loopback (a host name other than
/// `localhost` counts as not loopback). A cluster entirely on loopback may
/// run without a secret.
pub fn needs_auth(listen: &str, advertise: Option<&str>, seeds: &[String]) -> bool {
    first_beyond_loopback(listen, advertise, seeds).is_some()
}

/// The first of these addresses that is not loopback.
fn first_beyond_loopback<'a>(
    listen: &'a str,
    advertise: Option<&'a str>,
    seeds: &'a [String],
) -> Option<&'a str> {
    std::iter::once(listen)
        .chain(advertise)
        .chain(seeds.iter().map(String::as_str))
        .find(|addr| !is_loopback(addr))
}

/// Refuses a node reachable beyond loopback whose peers would not have to
/// authenticate (with the secret, or with TLS certificates).
fn check_peer_auth(config: &NodeConfig) -> anyhow::Result<()> {
    let authenticated = config.secret.is_some() || config.tls.is_some();
    let seeds = &config.seeds;
    if authenticated || !needs_auth(&config.listen, config.advertise.as_deref(), seeds) {
        return Ok(());
    }
    let addr = first_beyond_loopback(&config.listen, config.advertise.as_deref(), seeds)
        .unwrap_or(&config.listen);
    anyhow::bail!(
        "secret-file: {} is not loopback, so peers must authenticate: give --secret-file FILE (or RINGLEADER_SECRET_FILE), or --tls-cert, --tls-key and --tls-ca",
        crate::printable::bounded(addr)
    )
}

/// The log filter: `--log`, else `RUST_LOG`, else `LOG_LEVEL`, else
/// `info,openraft=error`. An invalid one is an error naming `log` (and the
/// variable it came from).
fn log_filter(args: &RunArgs) -> Result<tracing_subscriber::EnvFilter, String> {
    let (source, filter) = match (&args.log, legacy("RUST_LOG"), legacy("LOG_LEVEL")) {
        (Some(log), _, _) => ("", log.clone()),
        (None, Some(v), _) => (" (from RUST_LOG)", v),
        (None, None, Some(v)) => (" (from LOG_LEVEL)", v),
        // openraft reports every unreachable peer at WARN/ERROR, which is
        // routine when a member dies; ask for it explicitly to see it.
        (None, None, None) => ("", "info,openraft=error".to_string()),
    };
    tracing_subscriber::EnvFilter::builder()
        .parse(&filter)
        .map_err(|e| {
            format!(
                "log{source}: {:?} is not a log filter (e.g. info or info,ringleader=debug): {e}",
                crate::printable::bounded(&filter)
            )
        })
}

/// The API token from `--api-token-file`, if given.
fn api_token_from(args: &RunArgs) -> anyhow::Result<Option<crate::http::auth::ApiToken>> {
    let Some(path) = &args.api_token_file else {
        return Ok(None);
    };
    let raw = std::fs::read(path)
        .with_context(|| format!("api-token-file: cannot read {}", path.display()))?;
    crate::http::auth::ApiToken::from_file_bytes(&raw)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("api-token-file: {}: {e}", path.display()))
}

/// The HTTP server's limits from the settings, the connection limit capped
/// by the open-file limit `nofile` (see [`crate::http::server::connection_cap`]).
fn http_limits(args: &RunArgs, nofile: Option<u64>) -> anyhow::Result<crate::http::server::Limits> {
    use crate::http::server::{DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS, connection_cap};
    let configured = args.http_max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=1_000_000).contains(&configured) {
        anyhow::bail!("http-max-connections: {configured}: must be 1 to 1000000");
    }
    let max_connections = connection_cap(configured, nofile);
    if max_connections < configured {
        tracing::warn!(
            configured,
            max_connections,
            open_file_limit = nofile,
            "HTTP connections limited by the open-file limit (raise it to serve more)"
        );
    }
    let header_timeout = match args.http_header_timeout_ms {
        Some(ms) => millis("http-header-timeout-ms", ms)?,
        None => DEFAULT_HEADER_TIMEOUT,
    };
    Ok(crate::http::server::Limits {
        max_connections,
        header_timeout,
    })
}

/// Shortest accepted cluster secret, in bytes (after trimming).
pub use ringleader::transport::handshake::MIN_SECRET_BYTES;

/// The secret in a secret file's bytes: the raw bytes with ASCII whitespace
/// trimmed at both ends, nothing decoded (two files that differ in any other
/// byte are different secrets). Empty or shorter than [`MIN_SECRET_BYTES`]
/// is refused.
fn secret_bytes(raw: &[u8]) -> Result<Vec<u8>, String> {
    let secret = raw.trim_ascii();
    if secret.is_empty() {
        return Err("is empty".into());
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "holds {} bytes; a secret needs at least {MIN_SECRET_BYTES} (e.g. `head -c 32 /dev/urandom > FILE`)",
            secret.len()
        ));
    }
    Ok(secret.to_vec())
}

/// How many log lines may wait for stderr before further ones are dropped.
const LOG_QUEUE_LINES: usize = 4096;

/// Logs go to stderr through a writer thread and a bounded, lossy queue: a
/// stderr nobody reads loses log lines instead of blocking the node. ANSI
/// colours only when stderr is a terminal. Keep the guard until exit: it
/// flushes what is queued.
fn init_logging(
    args: &RunArgs,
    filter: tracing_subscriber::EnvFilter,
) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("log-output")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    if args.log_format.as_deref() == Some("json") {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}

/// One JSON line describing `event` as seen by `node`.
///
/// Node ids, epochs and tokens are 64-bit and exceed 2^53, where JSON numbers
/// lose precision in JavaScript (a rounded fencing token is worse than none),
/// so they are written as decimal strings, as in the HTTP API.
pub fn event_line(node: &Node, event: &Event) -> String {
    let mut value = serde_json::to_value(event).unwrap_or(Value::Null);
    stringify_wide(&mut value);
    if let Value::Object(map) = &mut value {
        map.insert("node".into(), json!(node.info().name));
    }
    value.to_string()
}

/// Rewrites the 64-bit identifier fields (`id`, `leader`, `epoch`, `token`)
/// of `value`, at any depth, as decimal strings.
fn stringify_wide(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if matches!(key.as_str(), "id" | "leader" | "epoch" | "token") {
                    if let Some(n) = v.as_u64() {
                        *v = Value::String(n.to_string());
                        continue;
                    }
                }
                stringify_wide(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(stringify_wide),
        _ => {}
    }
}

/// One JSON line announcing that `node` is in the cluster.
pub fn ready_line(node: &Node) -> String {
    let status = node.status();
    let me = status.members.iter().find(|m| m.id == node.id());
    json!({
        "type": "ready",
        "node": node.info().name,
        "id": node.id().to_string(),
        "pid": std::process::id(),
        "addr": node.info().addr,
        "role": me.map(|m| m.role),
        "leader": status.leader.map(|l| l.to_string()),
        "epoch": status.epoch.to_string(),
    })
    .to_string()
}

pub async fn main(args: RunArgs) -> ExitCode {
    let file = match read_file(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ringleader: invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    let args = with_file(args, file);
    if !matches!(
        args.log_format.as_deref(),
        None | Some("text") | Some("json")
    ) {
        eprintln!("ringleader: invalid configuration: log-format: must be text or json");
        return ExitCode::from(2);
    }
    let filter = match log_filter(&args) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("ringleader: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_guard = init_logging(&args, filter);
    if legacy("TIME_TO_RECONNECT").is_some() {
        tracing::info!("TIME_TO_RECONNECT is not needed: members find a new leader by themselves");
    }
    let (config, api_token) = match config_from(&args).and_then(|c| Ok((c, api_token_from(&args)?)))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringleader: invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Descriptors: as many as we may, and the HTTP API gets a bounded share.
    let nofile = crate::http::server::raise_fd_limit();
    let limits = match http_limits(&args, nofile) {
        Ok(limits) => limits,
        Err(e) => {
            eprintln!("ringleader: invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Bind the API first: a port in use is a configuration error, reported
    // before this node joins anything.
    let http_addr = config.http_addr.clone().unwrap_or_default();
    let http_listener = match tokio::net::TcpListener::bind(&http_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ringleader: invalid configuration: http: cannot listen on {http_addr}: {e}");
            return ExitCode::from(2);
        }
    };
    let revoke_timeout = config.timings.revoke_timeout;
    let node = match ringleader::NodeBuilder::from_config(config).start().await {
        Ok(node) => node,
        Err(e @ (ringleader::Error::Config { .. } | ringleader::Error::Bind { .. })) => {
            eprintln!("ringleader: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("ringleader: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let output = match crate::output::EventOutput::start(std::io::stdout(), args.event_queue_lines)
    {
        Ok(output) => output,
        Err(e) => {
            eprintln!("ringleader: cannot start the event output thread: {e}");
            node.shutdown().await;
            return ExitCode::from(1);
        }
    };
    let options = crate::http::ApiOptions {
        events_dropped: output.dropped(),
        api_token,
    };
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(crate::http::serve(
        http_listener,
        node.clone(),
        options,
        limits,
        async {
            let _ = http_stopped.await;
        },
    ));
    // Subscribed here, before anything else runs, so no event is missed.
    let printer = tokio::spawn(print_events(node.clone(), node.events(), output));
    let trimmer = tokio::spawn(crate::memory::keep_trimmed());
    // Independent of the printer: a stuck or closed stdout must not stop
    // releases (handoffs would then wait for the revoke deadline).
    let releaser = args
        .auto_release
        .then(|| tokio::spawn(auto_release(node.clone(), node.events())));
    // Enough for a full revocation deadline plus the leave itself.
    let leave_timeout = args
        .leave_timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(revoke_timeout + Duration::from_secs(2));
    let code = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("signal received; leaving the cluster");
            match node.leave(leave_timeout).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringleader: left without the cluster's acknowledgement: {e}");
                    ExitCode::SUCCESS
                }
            }
        }
        result = wait_failed(&node) => {
            eprintln!("ringleader: {result}");
            node.shutdown().await;
            match result {
                ringleader::Error::Refused(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    };
    printer.abort();
    trimmer.abort();
    if let Some(releaser) = releaser {
        releaser.abort();
    }
    // The API answers until here (/readyz said "leaving"); now it stops
    // accepting and lets what is in flight finish, briefly.
    let _ = stop_http.send(());
    let drain = crate::http::server::DRAIN + Duration::from_millis(500);
    if tokio::time::timeout(drain, http).await.is_err() {
        tracing::warn!("the HTTP API did not stop in time");
    }
    code
}

/// Writes every event of `node`, then one `ready` line once it has joined,
/// to the event output (which never blocks).
async fn print_events(
    node: Node,
    mut events: ringleader::EventStream,
    output: crate::output::EventOutput,
) {
    let mut announced = false;
    while let Some(event) = events.next().await {
        output.send(event_line(&node, &event));
        if !announced && node.is_joined() {
            announced = true;
            output.send(ready_line(&node));
        }
    }
}

/// `--auto-release`: releases every partition the moment it is revoked.
async fn auto_release(node: Node, mut events: ringleader::EventStream) {
    while let Some(event) = events.next().await {
        let partitions = match event {
            Event::PartitionsRevoking { partitions, .. } => partitions,
            // Some events were missed, perhaps a revocation: offer
            // everything held; only partitions under revocation are released.
            Event::Lagged { .. } => node.owned().iter().map(|g| g.partition).collect(),
            _ => continue,
        };
        if let Err(e) = node.release(&partitions).await {
            tracing::warn!(error = %e, "auto-release failed");
        }
    }
}

/// Resolves only if the cluster refuses this node for good, or Raft
/// stopped on it (its data directory cannot be written, say).
async fn wait_failed(node: &Node) -> ringleader::Error {
    loop {
        match node.wait_ready(Duration::from_secs(3600)).await {
            Err(e @ (ringleader::Error::Refused(_) | ringleader::Error::Raft(_))) => return e,
            // Joined (or still trying): keep watching for a later refusal
            // after an expulsion and rejoin.
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, only an external kill stops us.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(flags: &[&str]) -> RunArgs {
        let argv = std::iter::once("ringleader").chain(flags.iter().copied());
        Cli::try_parse_from(argv).expect("flags parse").run
    }

    #[test]
    fn secret_files_are_raw_bytes_trimmed_of_ascii_whitespace() {
        // Invalid UTF-8 is not decoded: these two are different secrets
        // (a lossy decoding made both 16 U+FFFD characters).
        let a = secret_bytes(&[0xff; 16]).expect("16 bytes");
        let b = secret_bytes(&[0xfe; 16]).expect("16 bytes");
        assert_ne!(a, b);
        assert_eq!(a, vec![0xff; 16]);
        // ASCII whitespace at both ends goes, inner bytes stay.
        assert_eq!(
            secret_bytes(b" \t0123456789 abcdef\r\n").unwrap(),
            b"0123456789 abcdef".to_vec()
        );
        // Non-ASCII whitespace (U+00A0, NBSP) is part of the secret.
        let nbsp = secret_bytes("\u{a0}0123456789abcdef".as_bytes()).unwrap();
        assert_eq!(nbsp.len(), 18);
        assert!(secret_bytes(b"").unwrap_err().contains("empty"));
        assert!(secret_bytes(b" \n\t ").unwrap_err().contains("empty"));
        let short = secret_bytes(b"  fifteen bytes!!  ").unwrap_err();
        assert!(
            short.contains("15 bytes") && short.contains("16"),
            "{short}"
        );
    }

    #[test]
    fn a_short_secret_file_is_a_configuration_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("ringleader-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("short");
        std::fs::write(&file, b"tiny\n").unwrap();
        let err = config_from(&args(&["--secret-file", file.to_str().unwrap()]))
            .expect_err("a 4-byte secret");
        assert!(err.to_string().starts_with("secret-file: "), "{err}");
        std::fs::write(&file, [0xfau8; 20]).unwrap();
        let config = config_from(&args(&["--secret-file", file.to_str().unwrap()])).unwrap();
        assert!(config.secret.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn refused(flags: &[&str]) -> String {
        match config_from(&args(flags)) {
            Ok(_) => panic!("{flags:?} was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn seeds_must_each_be_host_and_port() {
        for (seeds, why) in [
            ("not an address,,", "not an address"),
            ("127.0.0.1:7000,,127.0.0.1:7001", "empty"),
            ("127.0.0.1:7000,", "empty"),
            ("h1", "no port"),
            ("h1:", "port"),
            ("h1:0", "port"),
            ("h1:+70", "port"),
            ("h1:70000", "port"),
            (":7000", "HOST:PORT"),
            ("::1:7000", "HOST:PORT"),
            ("[nope]:7000", "HOST:PORT"),
        ] {
            let err = refused(&["--seeds", seeds]);
            assert!(err.starts_with("seeds: "), "{seeds}: {err}");
            assert!(err.contains(why), "{seeds}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let ok = config_from(&args(&[
            "--seeds",
            "localhost:7000, 127.0.0.2:7000,[::1]:7000",
        ]))
        .unwrap();
        assert_eq!(ok.seeds, ["localhost:7000", "127.0.0.2:7000", "[::1]:7000"]);
    }

    #[test]
    fn addresses_need_a_port() {
        let err = refused(&["--advertise", "nowhere"]);
        assert!(
            err.starts_with("advertise: ") && err.contains("no port"),
            "{err}"
        );
        assert!(refused(&["--advertise", "h:0"]).starts_with("advertise: "));
        assert!(refused(&["--listen", "127.0.0.1"]).starts_with("listen: "));
        assert!(refused(&["--http", "localhost:x"]).starts_with("http: "));
        // Port 0 asks for a free port where the node binds.
        config_from(&args(&["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])).unwrap();
    }

    #[test]
    fn timings_are_bounded_to_an_hour() {
        let max = u64::MAX.to_string();
        for flag in [
            "--heartbeat-ms",
            "--session-timeout-ms",
            "--lease-ms",
            "--revoke-timeout-ms",
            "--raft-heartbeat-ms",
            "--leave-timeout-ms",
        ] {
            for value in [max.as_str(), "3600001", "0"] {
                let err = refused(&[flag, value]);
                assert!(err.starts_with(&flag[2..]), "{flag} {value}: {err}");
            }
        }
        let range = format!("150-{max}");
        let err = refused(&["--election-timeout-ms", &range]);
        assert!(err.starts_with("election-timeout-ms: "), "{err}");
        let err = refused(&["--leave-timeout-ms", "50"]);
        assert!(err.starts_with("leave-timeout-ms: "), "{err}");
        // An hour is allowed where the relations between timings allow it.
        let long = config_from(&args(&["--revoke-timeout-ms", "3600000"])).unwrap();
        assert_eq!(long.timings.revoke_timeout, Duration::from_secs(3600));
    }

    #[test]
    fn an_invalid_log_filter_names_log() {
        let err = log_filter(&args(&["--log", "ringleader=loud"])).unwrap_err();
        assert!(err.starts_with("log: "), "{err}");
        assert!(log_filter(&args(&["--log", "info,ringleader=debug"])).is_ok());
    }

    #[test]
    fn a_negative_partition_count_names_the_flag() {
        let err = Cli::try_parse_from(["ringleader", "--partitions", "-1"])
            .err()
            .expect("refused");
        assert!(err.to_string().contains("--partitions"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn errors_say_invalid_configuration_once() {
        let err = refused(&["--partitions", "0"]);
        assert!(err.starts_with("partitions: "), "{err}");
        assert!(!err.contains("invalid configuration"), "{err}");
    }

    #[test]
    fn toml_errors_fit_on_one_line() {
        let path = std::path::Path::new("/etc/node.toml");
        for text in [
            "name = \"a\"\npartitons = 3\n",
            "name = \"a\"\nseeds = [\n  1,\n]\n",
            "name = \n",
            "election-timeout-ms = \"400-300\"\n",
        ] {
            let e = toml::from_str::<FileConfig>(text).unwrap_err();
            let line = toml_error(path, text, &e);
            assert!(!line.contains('\n'), "{line}");
            assert!(line.starts_with("config: /etc/node.toml:"), "{line}");
        }
        let text = "name = \"a\"\npartitons = 3\n";
        let e = toml::from_str::<FileConfig>(text).unwrap_err();
        let line = toml_error(path, text, &e);
        assert!(line.starts_with("config: /etc/node.toml:2:1: "), "{line}");
        assert!(line.contains("partitons"), "{line}");
    }

    #[test]
    fn only_a_loopback_cluster_may_run_without_a_secret() {
        let seeds = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let local = seeds(&["127.0.0.1:7001", "localhost:7002", "[::1]:7003"]);
        assert!(!needs_auth("127.0.0.1:7000", None, &local));
        assert!(!needs_auth("127.0.0.2:0", Some("127.0.0.2:7000"), &[]));
        assert!(needs_auth("0.0.0.0:7000", Some("127.0.0.1:7000"), &local));
        assert!(needs_auth("127.0.0.1:7000", Some("10.1.2.3:7000"), &local));
        assert!(needs_auth("127.0.0.1:7000", None, &seeds(&["node-2:7000"])));
        assert!(needs_auth("[::]:7000", Some("[::1]:7000"), &[]));

        let err = refused(&["--listen", "0.0.0.0:0", "--advertise", "10.1.2.3:7000"]);
        assert!(err.starts_with("secret-file: "), "{err}");
        assert!(
            err.contains("--secret-file") && err.contains("RINGLEADER_SECRET_FILE"),
            "{err}"
        );
        let err = refused(&["--seeds", "10.0.0.1:7000"]);
        assert!(err.contains("10.0.0.1:7000"), "{err}");
        config_from(&args(&["--seeds", "127.0.0.1:7000,localhost:7001"])).unwrap();
    }

    #[test]
    fn tls_flags_come_in_threes_and_count_as_authentication() {
        let err = refused(&["--tls-cert", "/nonexistent/c.pem"]);
        assert!(
            err.starts_with("tls: ") && err.contains("--tls-ca"),
            "{err}"
        );
        let flags = [
            "--tls-cert",
            "/nonexistent/c.pem",
            "--tls-key",
            "/nonexistent/k.pem",
            "--tls-ca",
            "/nonexistent/ca.pem",
        ];
        let err = refused(&flags);
        assert!(err.starts_with("tls-cert: /nonexistent/c.pem"), "{err}");
        // With TLS, a network address needs no secret.
        let mut config = NodeConfig {
            listen: "10.0.0.1:7000".into(),
            ..NodeConfig::default()
        };
        assert!(check_peer_auth(&config).is_err());
        let pair = rcgen::generate_simple_self_signed(vec!["10.0.0.1".to_string()]).unwrap();
        let (cert, key) = (pair.cert.pem(), pair.key_pair.serialize_pem());
        let tls = ringleader::transport::tls::TlsConfig::from_pem(
            cert.as_bytes(),
            key.as_bytes(),
            cert.as_bytes(),
        );
        config.tls = Some(tls.expect("a self-signed pair loads"));
        assert!(check_peer_auth(&config).is_ok());
    }

    #[test]
    fn http_limits_are_checked_and_capped_by_the_open_file_limit() {
        let limits = http_limits(&args(&[]), Some(1 << 20)).unwrap();
        assert_eq!(limits, crate::http::server::Limits::default());
        let small = http_limits(&args(&["--http-max-connections", "900"]), Some(1024)).unwrap();
        assert_eq!(small.max_connections, 480);
        let custom = [
            "--http-header-timeout-ms",
            "1500",
            "--http-max-connections",
            "20",
        ];
        let custom = http_limits(&args(&custom), None).unwrap();
        assert_eq!(custom.header_timeout, Duration::from_millis(1500));
        assert_eq!(custom.max_connections, 20);
        for (flag, value) in [
            ("--http-max-connections", "0"),
            ("--http-header-timeout-ms", "0"),
            ("--http-header-timeout-ms", "18446744073709551615"),
        ] {
            let err = http_limits(&args(&[flag, value]), None)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&flag[2..]), "{err}");
        }
    }

    #[test]
    fn election_timeouts_parse_as_a_range() {
        assert_eq!(parse_range("150-200"), Ok((150, 200)));
        assert_eq!(parse_range(" 450 - 600 "), Ok((450, 600)));
        for bad in ["200", "200-150", "150-150", "a-200", "-200", "150-"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn raft_timings_reach_the_node_config() {
        let config = config_from(&args(&[
            "--raft-heartbeat-ms",
            "150",
            "--election-timeout-ms",
            "450-600",
        ]))
        .expect("valid");
        assert_eq!(config.timings.raft_heartbeat, Duration::from_millis(150));
        assert_eq!(
            config.timings.election_timeout_min,
            Duration::from_millis(450)
        );
        assert_eq!(
            config.timings.election_timeout_max,
            Duration::from_millis(600)
        );
        // Untouched settings keep their defaults.
        assert_eq!(config.timings.heartbeat, Timings::default().heartbeat);
    }

    #[test]
    fn an_election_timeout_below_the_raft_heartbeat_is_refused() {
        let err = config_from(&args(&[
            "--raft-heartbeat-ms",
            "200",
            "--election-timeout-ms",
            "150-300",
        ]))
        .expect_err("election min below the heartbeat");
        assert!(err.to_string().contains("election-timeout-ms"), "{err}");
        assert!(Cli::try_parse_from(["ringleader", "--election-timeout-ms", "300"]).is_err());
    }

    #[test]
    fn the_config_file_takes_raft_timings() {
        let file: FileConfig =
            toml::from_str("raft-heartbeat-ms = 100\nelection-timeout-ms = \"300-400\"\n")
                .expect("valid file");
        let merged = with_file(args(&[]), file);
        assert_eq!(merged.raft_heartbeat_ms, Some(100));
        assert_eq!(merged.election_timeout_ms, Some((300, 400)));
        let bad = toml::from_str::<FileConfig>("election-timeout-ms = \"400-300\"\n");
        assert!(bad.is_err());
    }
}

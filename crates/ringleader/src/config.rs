//! Node configuration and its validation.

use std::time::Duration;

use crate::error::Error;
use crate::limits;
use crate::transport::codec::DEFAULT_MAX_FRAME;
use crate::transport::handshake::Secret;

/// Default cluster name.
pub const DEFAULT_CLUSTER: &str = "ringleader";
/// Default number of partitions.
pub const DEFAULT_PARTITIONS: u32 = 256;
/// Default number of Raft voters: five once the cluster has five live
/// members (any two may then fail at once), three from three, one alone
/// (see `desired_voters` in `node/leader.rs`).
pub const DEFAULT_VOTERS: usize = 5;

/// Every timing a node uses. See `docs/architecture.md` for what each is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timings {
    /// How often a member heartbeats the leader (default 200 ms).
    pub heartbeat: Duration,
    /// How long the leader waits without a heartbeat before it removes a
    /// member (default 1 s).
    pub session_timeout: Duration,
    /// Raft leader heartbeat to voters (default 50 ms).
    pub raft_heartbeat: Duration,
    /// Raft election timeout, lower bound (default 150 ms).
    pub election_timeout_min: Duration,
    /// Raft election timeout, upper bound (default 200 ms). openraft makes
    /// voters refuse votes for this long after they last heard from their
    /// leader, and a follower campaigns only after this plus a random
    /// election timeout: 350-400 ms of leader silence by default. openraft's
    /// own default of 300 ms would make that 450-600 ms, too slow for a
    /// 1.5 s leader failover with a 1 s lease.
    pub election_timeout_max: Duration,
    /// How long one request to a peer may take (default 500 ms).
    pub rpc_timeout: Duration,
    /// How long an acknowledged heartbeat lets a node act on its partitions
    /// (default 1 s; at most the session timeout). See [`crate::lease`].
    pub lease: Duration,
    /// How long an owner has to stop and release a partition that is being
    /// moved before the leader takes it anyway (default 5 s; at least the lease).
    pub revoke_timeout: Duration,
    /// Bound on how much any two clocks' *rates* differ, in parts per
    /// million (default 10 000 = 1 %). Clocks need not be synchronised.
    pub clock_drift_ppm: u32,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(200),
            session_timeout: Duration::from_millis(1000),
            raft_heartbeat: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(200),
            rpc_timeout: Duration::from_millis(500),
            lease: Duration::from_millis(1000),
            revoke_timeout: Duration::from_millis(5000),
            clock_drift_ppm: 10_000,
        }
    }
}

/// Everything a node is started with. Build it with [`crate::Node::builder`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name; a random one (`node-xxxxxx`) when absent.
    pub name: Option<String>,
    /// Where to listen for peers (`HOST:PORT`; port 0 picks a free one).
    pub listen: String,
    /// The address peers should use; defaults to the bound listen address.
    /// Must be spelled like the seed lists spell it.
    pub advertise: Option<String>,
    /// The HTTP API address to publish to other members, if any.
    pub http_addr: Option<String>,
    /// Seed peer addresses. Empty (or only this node): start a new cluster.
    pub seeds: Vec<String>,
    /// The cluster name; peers of other clusters are refused at handshake.
    pub cluster: String,
    /// The shared secret every peer must prove it knows. Required unless
    /// every address is on loopback or `allow_unauthenticated` is set.
    pub secret: Option<Secret>,
    /// Mutual TLS for peer connections (peers then authenticate with
    /// certificates from the cluster CA, and traffic is encrypted).
    pub tls: Option<crate::transport::tls::TlsConfig>,
    /// Run without a secret on non-loopback addresses (anyone who reaches
    /// the peer port is then a peer). Default false.
    pub allow_unauthenticated: bool,
    /// Number of partitions (fixed for the cluster's life).
    pub num_partitions: u32,
    /// Target number of Raft voters: 1, 3, 5 (default) or 7.
    pub voters: usize,
    /// Timings.
    pub timings: Timings,
    /// Largest frame accepted from or sent to a peer.
    pub max_frame: usize,
    /// Where the node keeps its identity and Raft state across restarts.
    /// None: ephemeral (a restart is a new node).
    pub data_dir: Option<std::path::PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: None,
            listen: "127.0.0.1:0".to_string(),
            advertise: None,
            http_addr: None,
            seeds: Vec::new(),
            cluster: DEFAULT_CLUSTER.to_string(),
            secret: None,
            tls: None,
            allow_unauthenticated: false,
            num_partitions: DEFAULT_PARTITIONS,
            voters: DEFAULT_VOTERS,
            timings: Timings::default(),
            max_frame: DEFAULT_MAX_FRAME,
            data_dir: None,
        }
    }
}

impl NodeConfig {
    /// Checks every setting, naming the first one that is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_addresses()?;
        if self.num_partitions == 0 || self.num_partitions > crate::partitioner::MAX_PARTITIONS {
            return Err(Error::config(
                "partitions",
                format!("must be 1 to {}", crate::partitioner::MAX_PARTITIONS),
            ));
        }
        if !matches!(self.voters, 1 | 3 | 5 | 7) {
            return Err(Error::config("voters", "must be 1, 3, 5 or 7"));
        }
        let min_frame = limits::min_frame(self.num_partitions);
        if self.max_frame < min_frame || self.max_frame > 256 * 1024 * 1024 {
            return Err(Error::config(
                "max-frame",
                format!(
                    "must be {min_frame} bytes (the largest update with {} partitions) to 256 MiB",
                    self.num_partitions
                ),
            ));
        }
        self.validate_timings()
    }

    /// Names, addresses, and the rule that peers on a network authenticate.
    fn validate_addresses(&self) -> Result<(), Error> {
        let field = |e: limits::FieldError| Error::config(e.field(), e.reason());
        limits::check_name("cluster", &self.cluster).map_err(field)?;
        if let Some(name) = &self.name {
            limits::check_name("name", name).map_err(field)?;
        }
        limits::check_listen("listen", &self.listen).map_err(field)?;
        if let Some(advertise) = &self.advertise {
            limits::check_addr("advertise", advertise).map_err(field)?;
        }
        if let Some(http) = &self.http_addr {
            limits::check_listen("http", http).map_err(field)?;
        }
        for seed in &self.seeds {
            limits::check_addr("seeds", seed).map_err(field)?;
        }
        let authenticated = self.secret.is_some() || self.tls.is_some();
        if !authenticated && !self.allow_unauthenticated && !self.loopback_only() {
            return Err(Error::config(
                "secret",
                "peers on a network must authenticate: give a shared cluster secret (at least 16 bytes) or TLS certificates, or keep every address on loopback",
            ));
        }
        Ok(())
    }

    /// Whether every address this node listens on, advertises or seeds
    /// from is a loopback address.
    pub fn loopback_only(&self) -> bool {
        let mut addrs = [&self.listen].into_iter().chain(&self.seeds);
        addrs.all(|a| is_loopback(a)) && self.advertise.as_deref().is_none_or(is_loopback)
    }

    fn validate_timings(&self) -> Result<(), Error> {
        let t = &self.timings;
        let ms = |d: Duration| d.as_millis();
        if ms(t.heartbeat) < 10 {
            return Err(Error::config("heartbeat-ms", "must be at least 10 ms"));
        }
        if t.session_timeout < t.heartbeat * 2 {
            return Err(Error::config(
                "session-timeout-ms",
                "must be at least twice the heartbeat interval",
            ));
        }
        if ms(t.raft_heartbeat) < 5 {
            return Err(Error::config("raft-heartbeat-ms", "must be at least 5 ms"));
        }
        if t.election_timeout_min <= t.raft_heartbeat
            || t.election_timeout_max <= t.election_timeout_min
        {
            return Err(Error::config(
                "election-timeout-ms",
                "need raft heartbeat < election min < election max",
            ));
        }
        if ms(t.rpc_timeout) < 10 {
            return Err(Error::config("rpc-timeout-ms", "must be at least 10 ms"));
        }
        if t.lease < t.heartbeat * 2 || t.lease > t.session_timeout {
            return Err(Error::config(
                "lease-ms",
                "must be at least twice the heartbeat and at most the session timeout",
            ));
        }
        if t.revoke_timeout < t.lease {
            return Err(Error::config(
                "revoke-timeout-ms",
                "must be at least the lease",
            ));
        }
        if t.clock_drift_ppm > 100_000 {
            return Err(Error::config(
                "clock-drift-ppm",
                "must be at most 100000 (10 %)",
            ));
        }
        Ok(())
    }

    pub(crate) fn raft_config(&self) -> Result<openraft::Config, Error> {
        let t = &self.timings;
        let config = openraft::Config {
            cluster_name: self.cluster.clone(),
            heartbeat_interval: t.raft_heartbeat.as_millis() as u64,
            // The leader's quorum check (`node/quorum.rs`) sends an empty
            // AppendEntries to every voter each `raft_heartbeat`: that is a
            // Raft heartbeat, so openraft's own would only double the traffic.
            enable_heartbeat: false,
            election_timeout_min: t.election_timeout_min.as_millis() as u64,
            election_timeout_max: t.election_timeout_max.as_millis() as u64,
            install_snapshot_timeout: (t.rpc_timeout.as_millis() as u64).max(200),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 200,
            snapshot_max_chunk_size: 1024 * 1024,
            // Every entry is at most limits::MAX_ENTRY_BYTES: a batch of
            // this many fits one frame.
            max_payload_entries: limits::max_payload_entries(self.max_frame),
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| Error::config("raft timings", e.to_string()))
    }
}

/// Whether `addr` (`HOST:PORT`) names a loopback host: `localhost` or an
/// IP address in 127.0.0.0/8 or ::1.
pub fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        // ::ffff:127.0.0.1 is loopback too.
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_recognised() {
        for a in [
            "127.0.0.1:1",
            "127.9.9.9:1",
            "[::1]:7000",
            "localhost:7000",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "0.0.0.0:1",
            "10.0.0.1:7000",
            "[::]:7000",
            "example.com:7000",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }

    #[test]
    fn a_network_address_needs_a_secret() {
        let mut config = NodeConfig {
            listen: "10.0.0.1:7000".into(),
            ..NodeConfig::default()
        };
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("secret"), "{e}");
        config.secret = Some(Secret::new(vec![1u8; 16]).unwrap());
        assert!(config.validate().is_ok());
        config.secret = None;
        config.allow_unauthenticated = true;
        assert!(config.validate().is_ok());
        // A loopback node with a network seed or advertise address is on
        // the network too.
        let seeded = NodeConfig {
            seeds: vec!["10.0.0.2:7000".into()],
            ..NodeConfig::default()
        };
        assert!(seeded.validate().is_err());
        assert!(NodeConfig::default().validate().is_ok());
    }

    #[test]
    fn fields_are_bounded_and_addresses_checked() {
        type Spoil = fn(&mut NodeConfig);
        let cases: [(&str, Spoil); 5] = [
            ("name", |c| c.name = Some("n".repeat(256))),
            ("cluster", |c| c.cluster = String::new()),
            ("seeds", |c| c.seeds = vec!["not an address".into()]),
            ("advertise", |c| c.advertise = Some("nowhere".into())),
            ("max-frame", |c| c.max_frame = 64 * 1024),
        ];
        for (setting, spoil) in cases {
            let mut config = NodeConfig::default();
            spoil(&mut config);
            let e = config.validate().unwrap_err().to_string();
            assert!(e.contains(setting), "{setting}: {e}");
        }
    }
}

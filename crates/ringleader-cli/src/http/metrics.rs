//! `GET /metrics`: Prometheus text exposition, rendered at scrape time from
//! the node's current state and counters.

use axum::extract::State;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Api, text};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    role: String,
    alive: String,
}

pub async fn render(State(api): State<Api>) -> Response {
    let node = &api.node;
    let status = node.status();
    let mut registry = Registry::with_prefix("ringleader");

    let members = Family::<MemberLabels, Gauge>::default();
    for m in &status.members {
        members
            .get_or_create(&MemberLabels {
                role: m.role.to_string(),
                alive: m.alive.to_string(),
            })
            .inc();
    }
    registry.register("members", "Members by role and liveness", members);

    let gauge = |v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        g
    };
    registry.register(
        "is_leader",
        "1 if this node leads",
        gauge(i64::from(node.is_leader())),
    );
    // Epochs and tokens exceed 2^53; the index half is what moves.
    registry.register(
        "epoch_index",
        "Log index of the current leadership epoch (the low half of the epoch token)",
        gauge((status.epoch & u64::from(u32::MAX)) as i64),
    );
    registry.register(
        "applied_index",
        "Log index of the last applied change",
        gauge(status.applied_index as i64),
    );
    registry.register(
        "partitions_owned",
        "Partitions this node holds valid grants for",
        gauge(node.owned().len() as i64),
    );
    registry.register(
        "partitions_total",
        "Partitions in the cluster",
        gauge(i64::from(node.config().num_partitions)),
    );

    let wire = node.wire_stats();
    let stats = node.stats();
    let counters: [(&str, &str, &AtomicU64); 13] = [
        (
            "frames_rejected",
            "Peer connections closed for a malformed, truncated or oversized frame",
            &wire.frames_rejected,
        ),
        (
            "handshakes_refused",
            "Peer connections refused at the handshake (cluster name, secret, version)",
            &wire.handshakes_refused,
        ),
        (
            "connections_shed",
            "Peer connections closed because too many were open or in their handshake",
            &wire.connections_shed,
        ),
        (
            "requests_refused",
            "Peer requests refused after the handshake: they spoke for another node or listed too many partitions",
            &wire.requests_refused,
        ),
        (
            "refusals_unlogged",
            "Log lines about refused peers left out by the rate limit",
            &wire.refusals_unlogged,
        ),
        (
            "rebalances",
            "Rebalancing steps committed as leader",
            &stats.rebalances,
        ),
        (
            "partitions_granted",
            "Partitions granted as leader",
            &stats.partitions_granted,
        ),
        (
            "handoffs",
            "Handoffs (revoke to release) completed as leader",
            &stats.handoffs,
        ),
        (
            "handoff_milliseconds",
            "Total duration of those handoffs (divide by ringleader_handoffs for the mean)",
            &stats.handoff_millis,
        ),
        (
            "session_expirations",
            "Members expired as leader after a silent session",
            &stats.session_expirations,
        ),
        (
            "partitions_lost",
            "Partitions this node lost without releasing them",
            &stats.partitions_lost,
        ),
        (
            "lease_renewals_by_heartbeat",
            "Lease renewals by this node's own acknowledged heartbeats",
            &stats.renewals_by_heartbeat,
        ),
        (
            "lease_renewals_by_beat",
            "Lease renewals by the leader's quorum rounds (voters, which then skip their own heartbeats)",
            &stats.renewals_by_beat,
        ),
    ];
    for (name, help, value) in counters {
        let c = Counter::<u64>::default();
        c.inc_by(value.load(Ordering::Relaxed));
        registry.register(name, help, c);
    }
    let dropped = Counter::<u64>::default();
    dropped.inc_by(api.options.events_dropped.load(Ordering::Relaxed));
    registry.register(
        "events_dropped",
        "Event lines dropped because stdout did not take them (full pipe or closed reader)",
        dropped,
    );
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    registry.register(
        "lease_renew_rtt_microseconds",
        "Round trip of the last acknowledged heartbeat (lease renewal)",
        gauge(i64::try_from(load(&stats.heartbeat_rtt_micros)).unwrap_or(i64::MAX)),
    );

    let mut body = String::new();
    if encode(&mut body, &registry).is_err() {
        return super::error(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "could not encode metrics",
        );
    }
    text(
        body,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
}

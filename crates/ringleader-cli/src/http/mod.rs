//! The HTTP API: status, ownership queries, server-sent events, releases,
//! Prometheus metrics, health checks and a dashboard page. Documented in
//! `docs/openapi.yaml`.

pub mod auth;
pub mod feed;
mod metrics;
pub mod server;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use ringleader::Node;
use serde_json::{Value, json};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use self::feed::Feed;

/// Longest key accepted by the key lookups, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;

/// Everything the handlers need.
#[derive(Clone)]
pub struct Api {
    node: Node,
    feed: Arc<Feed>,
    options: ApiOptions,
}

/// What the daemon gives the API besides its node.
#[derive(Clone, Default)]
pub struct ApiOptions {
    /// Event lines dropped because stdout did not take them
    /// (`ringleader_events_dropped_total`).
    pub events_dropped: Arc<AtomicU64>,
    /// The token write endpoints require; without one, writes are accepted
    /// from loopback peers only (see [`auth`]).
    pub api_token: Option<auth::ApiToken>,
}

/// The routes, in one place so the OpenAPI test can compare them.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/status"),
    ("GET", "/partitions"),
    ("GET", "/v1/owner/{key}"),
    ("GET", "/v1/partition/{key}"),
    ("GET", "/v1/events"),
    ("POST", "/v1/partitions/{p}/release"),
    ("GET", "/metrics"),
    ("GET", "/livez"),
    ("GET", "/readyz"),
];

/// Builds the router for `node`.
pub fn router(node: Node, options: ApiOptions) -> Router {
    let feed = Feed::start(&node);
    let writes = axum::middleware::from_fn_with_state(options.api_token.clone(), auth::writes);
    let api = Api {
        node,
        feed,
        options,
    };
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/status", get(status))
        .route("/partitions", get(partitions))
        .route("/v1/owner/{key}", get(owner))
        .route("/v1/partition/{key}", get(owner))
        .route("/v1/events", get(events))
        .route(
            "/v1/partitions/{p}/release",
            post(release).route_layer(writes),
        )
        .route("/metrics", get(metrics::render))
        .route("/livez", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(ready))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .with_state(api)
}

/// The dashboard at `GET /`: one self-contained page (no external assets)
/// that reads `/status` every second, follows `/v1/events` and looks keys up
/// with `/v1/owner/{key}`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// A JSON error body: `{ "error": "..." }`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Node ids and tokens are 64-bit; JSON numbers lose precision above 2^53
/// in JavaScript, so the API writes them as decimal strings.
fn id(v: u64) -> Value {
    Value::String(v.to_string())
}

async fn status(State(api): State<Api>) -> Json<Value> {
    let s = api.node.status();
    let (_, table) = api.node.assignment();
    let members: Vec<Value> = s
        .members
        .iter()
        .map(|m| {
            let owned: Vec<u32> = table
                .iter()
                .enumerate()
                .filter(|(_, slot)| slot.owner == Some(m.id))
                .map(|(p, _)| p as u32)
                .collect();
            json!({
                "id": id(m.id),
                "name": m.name,
                "peer_addr": m.addr,
                "http_addr": m.http_addr,
                "role": m.role,
                "alive": m.alive,
                "leader": m.leader,
                "partitions": owned,
            })
        })
        .collect();
    Json(json!({
        "node": id(s.id),
        "name": s.name,
        "cluster": s.cluster,
        "leader": s.leader.map(id),
        "epoch": id(s.epoch),
        "index": s.applied_index,
        "num_partitions": api.node.config().num_partitions,
        "members": members,
    }))
}

async fn partitions(State(api): State<Api>) -> Json<Value> {
    let grants: Vec<Value> = api
        .node
        .owned()
        .iter()
        .map(|g| json!({ "partition": g.partition, "token": id(g.token) }))
        .collect();
    Json(Value::Array(grants))
}

async fn owner(State(api): State<Api>, Path(key): Path<String>) -> Response {
    if key.len() > MAX_KEY_BYTES {
        return error(
            StatusCode::BAD_REQUEST,
            format!("key is {} bytes; the limit is {MAX_KEY_BYTES}", key.len()),
        );
    }
    let partition = api.node.partition_for(key.as_bytes());
    let (_, table) = api.node.assignment();
    let slot = table.get(partition as usize).copied();
    let owner = slot.and_then(|s| s.owner);
    let status = api.node.status();
    let member = owner.and_then(|o| status.members.iter().find(|m| m.id == o));
    Json(json!({
        "key": key,
        "partition": partition,
        "owner": owner.map(id),
        "owner_name": member.map(|m| m.name.clone()),
        "owner_http_addr": member.and_then(|m| m.http_addr.clone()),
        "state": slot.map(|s| s.state),
        "token": slot.filter(|s| s.owner.is_some()).map(|s| id(s.token)),
    }))
    .into_response()
}

/// A partition number in a path: decimal digits only, no sign, no spaces,
/// no leading zeros (one spelling per partition).
fn parse_partition(text: &str) -> Option<u32> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

async fn release(State(api): State<Api>, Path(text): Path<String>) -> Response {
    let n = api.node.config().num_partitions;
    let Some(p) = parse_partition(&text) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "{:?} is not a partition number (decimal digits, no sign, no leading zeros)",
                crate::printable::bounded(&text)
            ),
        );
    };
    if p >= n {
        return error(
            StatusCode::BAD_REQUEST,
            format!("partition {p} does not exist (0 to {})", n - 1),
        );
    }
    match api.node.release(&[p]).await {
        Ok(released) if released.contains(&p) => {
            Json(json!({ "partition": p, "released": true })).into_response()
        }
        Ok(_) => {
            let reason = if api.node.owned().iter().any(|g| g.partition == p) {
                "this node owns the partition and is not asked to hand it off: \
                 a release answers a partitions_revoking event"
            } else {
                "this node does not hold the partition (never assigned here, \
                 already released, or moved)"
            };
            Json(json!({ "partition": p, "released": false, "reason": reason })).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn ready(State(api): State<Api>) -> Response {
    let node = &api.node;
    if node.is_shut_down() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "stopped");
    }
    if node.is_leaving() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "leaving the cluster");
    }
    if node.is_joined() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "not in the cluster yet")
    }
}

async fn events(
    State(api): State<Api>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (missed, gap, live) = api.feed.subscribe(after);
    Sse::new(event_stream(missed, gap, live))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn to_sse(n: &feed::Numbered) -> SseEvent {
    SseEvent::default()
        .id(n.seq.to_string())
        .event(n.kind.clone())
        .data(n.json.clone())
}

fn resync() -> SseEvent {
    SseEvent::default().event("resync").data(
        json!({ "type": "resync", "reason": "events were missed; re-read /status" }).to_string(),
    )
}

/// The replayed events (or a `resync` marker), then the live ones; a reader
/// too slow for the live channel gets a `resync` event instead of a silent gap.
fn event_stream(
    missed: Vec<feed::Numbered>,
    gap: bool,
    live: tokio::sync::broadcast::Receiver<feed::Numbered>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let head: Vec<Result<SseEvent, Infallible>> = if gap {
        vec![Ok(resync())]
    } else {
        missed.iter().map(|n| Ok(to_sse(n))).collect()
    };
    let mut last = missed.last().map(|n| n.seq);
    let tail = BroadcastStream::new(live).filter_map(move |r| {
        let out = match r {
            // Already replayed from the buffer.
            Ok(n) if last.is_some_and(|l| n.seq <= l) => None,
            Ok(n) => {
                last = Some(n.seq);
                Some(Ok(to_sse(&n)))
            }
            Err(BroadcastStreamRecvError::Lagged(_)) => Some(Ok(resync())),
        };
        futures::future::ready(out)
    });
    futures::stream::iter(head).chain(tail)
}

/// Serves the API on `listener` within `limits` until `shutdown` resolves
/// (see [`server::serve`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node,
    options: ApiOptions,
    limits: server::Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let app = router(node, options);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            %addr,
            max_connections = limits.max_connections,
            header_timeout_ms = limits.header_timeout.as_millis() as u64,
            routes = ?ROUTES,
            "serving the HTTP API"
        );
    }
    server::serve(listener, app, limits, shutdown).await;
}

/// Plain-text response with a content type, for `/metrics`.
pub fn text(body: String, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::ROUTES;
    use std::collections::BTreeSet;

    /// (METHOD, path) pairs documented in docs/openapi.yaml.
    fn documented() -> BTreeSet<(String, String)> {
        let spec = include_str!("../../../../docs/openapi.yaml");
        let mut out = BTreeSet::new();
        let mut in_paths = false;
        let mut path: Option<String> = None;
        for line in spec.lines() {
            if line == "paths:" {
                in_paths = true;
                continue;
            }
            if in_paths && !line.starts_with(' ') && !line.is_empty() {
                break;
            }
            if let Some(p) = line.strip_prefix("  /") {
                path = Some(format!("/{}", p.trim_end_matches(':')));
            } else if let (Some(p), Some(m)) = (&path, line.strip_prefix("    ")) {
                let m = m.trim_end_matches(':');
                if ["get", "post", "put", "delete", "patch"].contains(&m) {
                    out.insert((m.to_uppercase(), p.clone()));
                }
            }
        }
        out
    }

    /// Every listed route is routed (not a 404 or 405), and an unlisted one is not.
    #[tokio::test]
    async fn the_router_serves_the_listed_routes() {
        use axum::body::Body;
        use axum::http::Request;
        use tower::ServiceExt;
        let node = ringleader::Node::builder()
            .partitions(4)
            .start()
            .await
            .unwrap();
        node.wait_ready(std::time::Duration::from_secs(20))
            .await
            .unwrap();
        let app = super::router(node.clone(), super::ApiOptions::default());
        for (method, path) in ROUTES {
            if *path == "/v1/events" {
                continue; // a stream that does not end; covered by the daemon test
            }
            let uri = path.replace("{key}", "k").replace("{p}", "0");
            let req = Request::builder()
                .method(*method)
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let status = app.clone().oneshot(req).await.unwrap().status();
            assert!(status != 404 && status != 405, "{method} {uri}: {status}");
        }
        let req = Request::builder()
            .uri("/not-a-route")
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.oneshot(req).await.unwrap().status(), 404);
        node.shutdown().await;
    }

    /// A one-node cluster owning its `partitions` partitions.
    async fn ready_node(partitions: u32) -> ringleader::Node {
        let node = ringleader::Node::builder()
            .partitions(partitions)
            .start()
            .await
            .unwrap();
        node.wait_ready(std::time::Duration::from_secs(20))
            .await
            .unwrap();
        node
    }

    /// POSTs a release of `p` from `peer` with an optional bearer token;
    /// returns the status and the JSON body.
    async fn post_release(
        app: &axum::Router,
        p: &str,
        peer: &str,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        use axum::body::Body;
        use axum::extract::ConnectInfo;
        use axum::http::Request;
        use tower::ServiceExt;
        let mut req = Request::builder()
            .method("POST")
            .uri(format!("/v1/partitions/{p}/release"));
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let mut req = req.body(Body::empty()).unwrap();
        let peer: std::net::SocketAddr = peer.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        let response = app.clone().oneshot(req).await.unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn partition_numbers_have_one_spelling() {
        assert_eq!(super::parse_partition("0"), Some(0));
        assert_eq!(super::parse_partition("17"), Some(17));
        assert_eq!(super::parse_partition("4294967295"), Some(u32::MAX));
        for bad in [
            "",
            "+5",
            "-1",
            " 5",
            "5 ",
            "05",
            "00",
            "5a",
            "0x5",
            "4294967296",
            "٣",
        ] {
            assert_eq!(super::parse_partition(bad), None, "{bad:?}");
        }
    }

    /// A release says whether it did anything; bad numbers are 400.
    #[tokio::test]
    async fn a_release_answers_whether_it_released_anything() {
        let node = ready_node(4).await;
        let app = super::router(node.clone(), super::ApiOptions::default());
        // Owned here, but nobody asked for it back.
        let (status, body) = post_release(&app, "1", "127.0.0.1:9", None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["released"], false, "{body}");
        assert_eq!(body["partition"], 1, "{body}");
        assert!(
            body["reason"]
                .as_str()
                .is_some_and(|r| r.contains("revoking")),
            "{body}"
        );
        for bad in ["+1", "01", "%201", "4", "-1"] {
            let (status, body) = post_release(&app, bad, "127.0.0.1:9", None).await;
            assert_eq!(status, 400, "{bad}: {body}");
            assert!(body["error"].is_string(), "{body}");
        }
        node.shutdown().await;
    }

    /// Without a token, writes only from loopback; with one, only with it.
    #[tokio::test]
    async fn writes_need_loopback_or_the_api_token() {
        let node = ready_node(2).await;
        let open = super::router(node.clone(), super::ApiOptions::default());
        let (status, body) = post_release(&open, "0", "10.1.2.3:5000", None).await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("--api-token-file")),
            "{body}"
        );
        assert_eq!(post_release(&open, "0", "[::1]:5000", None).await.0, 200);

        let token = "0123456789abcdef0123";
        let options = super::ApiOptions {
            api_token: Some(super::auth::ApiToken::from_file_bytes(token.as_bytes()).unwrap()),
            ..Default::default()
        };
        let guarded = super::router(node.clone(), options);
        for (peer, given) in [
            ("127.0.0.1:5000", None),
            ("10.1.2.3:5000", None),
            ("127.0.0.1:5000", Some("0123456789abcdef012")),
            ("10.1.2.3:5000", Some("wrong-wrong-wrong-wrong")),
        ] {
            let (status, body) = post_release(&guarded, "0", peer, given).await;
            assert_eq!(status, 401, "{peer} {given:?}: {body}");
            assert!(body["error"].is_string(), "{body}");
        }
        let (status, body) = post_release(&guarded, "0", "10.1.2.3:5000", Some(token)).await;
        assert_eq!(status, 200, "{body}");
        // Reads stay open.
        use axum::body::Body;
        use axum::http::Request;
        use tower::ServiceExt;
        let req = Request::builder()
            .uri("/status")
            .body(Body::empty())
            .unwrap();
        assert_eq!(guarded.oneshot(req).await.unwrap().status(), 200);
        node.shutdown().await;
    }

    /// The paths the dashboard page fetches (`fetch(...)`, `EventSource(...)`),
    /// up to the first template placeholder.
    fn dashboard_paths() -> Vec<String> {
        let page = super::DASHBOARD;
        let mut out = Vec::new();
        for call in ["fetch(", "EventSource("] {
            for (at, _) in page.match_indices(call) {
                let rest = &page[at + call.len()..];
                let Some(quote) = rest.chars().next().filter(|c| "\"'`".contains(*c)) else {
                    continue; // a definition or a mention, not a call with a literal
                };
                let body = &rest[1..];
                let end = body.find([quote, '$', '?']).unwrap_or(body.len());
                out.push(body[..end].to_string());
            }
        }
        out
    }

    #[test]
    fn the_dashboard_reads_only_served_get_routes() {
        let paths = dashboard_paths();
        for wanted in ["/status", "/v1/events", "/v1/owner/"] {
            assert!(
                paths.iter().any(|p| p == wanted),
                "{wanted} not in {paths:?}"
            );
        }
        for path in &paths {
            let served = ROUTES.iter().any(|(method, route)| {
                *method == "GET"
                    && match route.find('{') {
                        // A parameterised route: the page's literal part is its prefix.
                        Some(brace) => path.as_str() == &route[..brace],
                        None => path == route,
                    }
            });
            assert!(
                served,
                "the dashboard fetches {path}, which is not a GET route"
            );
        }
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_is_served() {
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(served, documented());
    }
}

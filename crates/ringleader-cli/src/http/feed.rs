//! Numbered event feed for `GET /v1/events`: every event of the node gets a
//! sequence number; the last [`BUFFER`] are kept so a client reconnecting
//! with `Last-Event-ID` gets what it missed (or a `resync` event when that
//! is no longer buffered).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use ringleader::Node;
use tokio::sync::broadcast;

/// How many recent events are kept for reconnecting clients.
pub const BUFFER: usize = 1024;

/// One numbered event, already rendered as JSON.
#[derive(Debug, Clone)]
pub struct Numbered {
    /// Sequence number, from 1.
    pub seq: u64,
    /// The SSE event name (the event's `type`).
    pub kind: String,
    /// The JSON body.
    pub json: String,
}

/// The node's numbered events.
pub struct Feed {
    recent: Mutex<VecDeque<Numbered>>,
    live: broadcast::Sender<Numbered>,
}

impl Feed {
    /// Starts numbering `node`'s events.
    pub fn start(node: &Node) -> Arc<Feed> {
        let (live, _) = broadcast::channel(BUFFER);
        let feed = Arc::new(Feed {
            recent: Mutex::new(VecDeque::with_capacity(BUFFER)),
            live,
        });
        let mut events = node.events();
        let node = node.clone();
        let writer = feed.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while let Some(event) = events.next().await {
                seq += 1;
                let mut line = crate::run::event_line(&node, &event);
                // Carry the sequence number in the body too, for clients that
                // do not read SSE ids.
                if let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str(&line) {
                    map.insert("seq".into(), seq.into());
                    line = serde_json::Value::Object(map).to_string();
                }
                let kind = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "event".to_string());
                let numbered = Numbered {
                    seq,
                    kind,
                    json: line,
                };
                {
                    let mut recent = writer.recent.lock().unwrap_or_else(|e| e.into_inner());
                    if recent.len() == BUFFER {
                        recent.pop_front();
                    }
                    recent.push_back(numbered.clone());
                }
                let _ = writer.live.send(numbered);
            }
        });
        feed
    }

    /// Subscribes from now on, plus what followed `after` if still buffered.
    /// Returns `(missed, gap, live)`: `gap` is true when events after
    /// `after` were dropped from the buffer.
    pub fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (Vec<Numbered>, bool, broadcast::Receiver<Numbered>) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let live = self.live.subscribe();
        let Some(after) = after else {
            return (Vec::new(), false, live);
        };
        let oldest = recent.front().map_or(u64::MAX, |n| n.seq);
        let latest = recent.back().map_or(0, |n| n.seq);
        // Events were dropped since `after`, or the client numbers events of
        // another process (this node restarted): either way, resynchronise.
        let gap = (after + 1 < oldest && !recent.is_empty()) || after > latest;
        let missed = recent.iter().filter(|n| n.seq > after).cloned().collect();
        (missed, gap, live)
    }
}

//! The node's own copy of the committed cluster state, and the event feed
//! derived from it.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::{broadcast, watch};

use crate::events::Event;
use crate::protocol::Update;
use crate::raft::state_machine::Applied;
use crate::state::{ClusterState, Command};
use crate::types::NodeId;

/// Capacity of the event channel; slower readers see [`Event::Lagged`].
pub const EVENT_BUFFER: usize = 4096;

/// A node's view of the cluster: fed by its Raft state machine when it is a
/// voter and by the leader's heartbeat answers always; entries are applied
/// once, in index order, whichever source brings them first.
pub struct View {
    me: NodeId,
    inner: Mutex<ViewInner>,
    events: broadcast::Sender<Event>,
    changed: watch::Sender<u64>,
}

struct ViewInner {
    state: ClusterState,
    suspects: BTreeSet<NodeId>,
}

impl View {
    /// An empty view for node `me`.
    pub fn new(me: NodeId) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (changed, _) = watch::channel(0);
        Self {
            me,
            inner: Mutex::new(ViewInner {
                state: ClusterState::default(),
                suspects: BTreeSet::new(),
            }),
            events,
            changed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ViewInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the current state.
    pub fn state(&self) -> ClusterState {
        self.lock().state.clone()
    }

    /// Reads the current state without copying it.
    pub fn with<R>(&self, f: impl FnOnce(&ClusterState, &BTreeSet<NodeId>) -> R) -> R {
        let inner = self.lock();
        f(&inner.state, &inner.suspects)
    }

    /// Subscribes to events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Subscribes to "the view changed" notifications (the value is the index).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Publishes node-local events (ownership changes).
    pub fn emit(&self, events: Vec<Event>) {
        let _inner = self.lock(); // keep order with committed-state events
        for event in events {
            let _ = self.events.send(event);
        }
    }

    /// Wakes [`View::watch`] subscribers without a change.
    pub fn notify(&self) {
        self.changed.send_modify(|_| {});
    }

    /// Applies what the state machine reported.
    pub fn on_applied(&self, applied: Applied) {
        match applied {
            Applied::Entries(entries) => self.apply_entries(&entries),
            Applied::Snapshot(state) => self.replace(state),
        }
    }

    /// Applies what the leader sent in a heartbeat answer.
    pub fn on_update(&self, update: Update, suspects: Vec<NodeId>) {
        self.lock().suspects = suspects.into_iter().collect();
        match update {
            Update::UpToDate => {}
            Update::Delta(entries) => self.apply_entries(&entries),
            Update::Snapshot(state) => self.replace(*state),
        }
    }

    /// Replaces the leader-reported suspects (the leader itself computes them).
    pub fn set_suspects(&self, suspects: BTreeSet<NodeId>) {
        self.lock().suspects = suspects;
    }

    fn apply_entries(&self, entries: &[(u64, Command)]) {
        let mut inner = self.lock();
        let mut events = Vec::new();
        for (index, command) in entries {
            events.extend(inner.state.apply(*index, command));
        }
        let index = inner.state.index;
        // Publish under the lock so concurrent feeders cannot reorder events.
        self.publish(events, index);
    }

    fn replace(&self, state: ClusterState) {
        let mut inner = self.lock();
        let events = inner.state.replace_with(state);
        let index = inner.state.index;
        self.publish(events, index);
    }

    fn publish(&self, events: Vec<Event>, index: u64) {
        for event in events {
            let became_leader = match &event {
                Event::LeaderChanged { leader, epoch } if *leader == self.me => Some(*epoch),
                _ => None,
            };
            // No subscribers is fine: events are then simply not observed.
            let _ = self.events.send(event);
            if let Some(epoch) = became_leader {
                let _ = self.events.send(Event::BecameLeader { epoch });
            }
        }
        self.changed.send_replace(index);
    }
}

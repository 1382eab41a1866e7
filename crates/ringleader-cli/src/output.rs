//! Event lines on stdout that can never stop the node.
//!
//! The node hands each line to a bounded queue ([`EventOutput::send`] never
//! blocks); a dedicated thread writes them with blocking writes. A stdout
//! nobody reads fills its pipe, then the queue: further lines are dropped
//! and counted (`ringleader_events_dropped_total`), with one log line per
//! burst of drops. A stdout that fails (EPIPE when the reader exited, or any
//! other write error) is reported once and not written again. The events stay
//! available on `GET /v1/events` either way.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// Default number of event lines waiting for the writer thread.
pub const DEFAULT_QUEUE: usize = 1024;

/// The sending side of the event output: cheap, non-blocking.
pub struct EventOutput {
    queue: SyncSender<String>,
    dropped: Arc<AtomicU64>,
    /// Lines are being dropped right now (the last send found the queue full).
    in_burst: AtomicBool,
}

impl EventOutput {
    /// Starts the writer thread over `writer` with room for `capacity`
    /// waiting lines (at least one).
    pub fn start<W: Write + Send + 'static>(writer: W, capacity: usize) -> std::io::Result<Self> {
        let (queue, lines) = sync_channel(capacity.max(1));
        std::thread::Builder::new()
            .name("event-output".into())
            .spawn(move || write_lines(writer, lines))?;
        Ok(EventOutput {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
            in_burst: AtomicBool::new(false),
        })
    }

    /// Queues one line (without its newline); drops and counts it if the
    /// queue is full or the output has failed. Never blocks.
    pub fn send(&self, line: String) {
        match self.queue.try_send(line) {
            Ok(()) => {
                if self.in_burst.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        dropped_total = self.dropped.load(Ordering::Relaxed),
                        "stdout is taking events again"
                    );
                }
            }
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.in_burst.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "stdout is not being read: dropping events until it is \
                         (counted in ringleader_events_dropped_total; GET /v1/events has them)"
                    );
                }
            }
            // The writer stopped after a write error, which it reported.
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The count of dropped lines, shared (for the metrics endpoint).
    pub fn dropped(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }
}

/// The writer thread: blocking writes, a flush whenever the queue is empty,
/// and on the first error one log line and the end of writing.
fn write_lines<W: Write>(mut writer: W, lines: Receiver<String>) {
    let mut write = |line: &str, flush: bool| -> std::io::Result<()> {
        writer.write_all(line.as_bytes())?;
        writer.write_all(b"\n")?;
        if flush {
            writer.flush()?;
        }
        Ok(())
    };
    while let Ok(first) = lines.recv() {
        let mut line = first;
        let result = loop {
            // Flush only when nothing else is waiting: one write call per
            // batch of lines, not per line.
            match lines.try_recv() {
                Ok(next) => {
                    if let Err(e) = write(&line, false) {
                        break Err(e);
                    }
                    line = next;
                }
                Err(_) => break write(&line, true),
            }
        };
        if let Err(e) = result {
            tracing::warn!(
                error = %e,
                "cannot write events to stdout; event output stopped (the node keeps running; GET /v1/events has them)"
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};
    use std::time::{Duration, Instant};

    /// Whether the gate is open, and what went through it.
    type GateState = Mutex<(bool, Vec<u8>)>;

    /// A writer that blocks until released, then records what it was given.
    #[derive(Clone, Default)]
    struct Gate {
        state: Arc<(GateState, Condvar)>,
    }

    impl Gate {
        fn open(&self) {
            let (lock, cv) = &*self.state;
            lock.lock().unwrap().0 = true;
            cv.notify_all();
        }
        fn written(&self) -> Vec<u8> {
            self.state.0.lock().unwrap().1.clone()
        }
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.state;
            let mut state = lock.lock().unwrap();
            while !state.0 {
                state = cv.wait(state).unwrap();
            }
            state.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A writer whose reader has gone.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_stuck_writer_never_blocks_the_sender_and_drops_are_counted() {
        let gate = Gate::default();
        let out = EventOutput::start(gate.clone(), 4).unwrap();
        // The writer holds one line inside the stuck write, the queue four:
        // everything past that is dropped, and no send blocks.
        for i in 0..100 {
            out.send(format!("line {i}"));
        }
        // (The writer may have taken a line or two off the queue first.)
        let dropped = out.dropped().load(Ordering::Relaxed);
        assert!((90..=96).contains(&dropped), "{dropped}");
        gate.open();
        wait_for("the queued lines to be written", || {
            String::from_utf8_lossy(&gate.written()).lines().count() as u64 == 100 - dropped
        });
        // Once the output moves again, lines get through again.
        out.send("after".into());
        wait_for("a line after the burst", || {
            String::from_utf8_lossy(&gate.written()).ends_with("after\n")
        });
        assert_eq!(out.dropped().load(Ordering::Relaxed), dropped);
    }

    #[test]
    fn a_broken_pipe_stops_the_output_without_a_panic() {
        let out = EventOutput::start(Broken, 4).unwrap();
        out.send("first".into());
        // The writer gives up after its first error; later lines are
        // dropped and counted, never written, never blocking.
        wait_for("sends to be refused", || {
            out.send("more".into());
            out.dropped().load(Ordering::Relaxed) > 10
        });
    }
}

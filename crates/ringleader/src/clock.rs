//! The node's clock: every duration ringleader and openraft measure
//! (leases, sessions, heartbeats, election timeouts, RPC timeouts) is
//! measured here, so a simulator can make one node's clock run fast or slow
//! and can freeze one node's process.
//!
//! Normal use changes nothing: no [`Process`] is set, [`Instant::now`] is
//! tokio's clock, and [`sleep`], [`timeout`], [`interval`] and [`spawn`] are
//! tokio's, after one task-local lookup.
//!
//! A simulator starts a node with [`crate::NodeBuilder::process`]. The
//! node's tasks, and every task openraft spawns for it (through
//! [`crate::runtime::RaftRuntime`]), then run inside that [`Process`]:
//!
//! - its clock runs at `1 + rate_ppm / 1e6` times the speed of tokio's
//!   (real, or simulated) time, counted from the moment the process was
//!   created: [`Instant::now`] is that local time, and sleeps and timeouts
//!   given in local time are converted to real time, rounded up, so a timer
//!   never fires early as the node sees it;
//! - [`Process::pause`] stops it: none of its tasks is polled until
//!   [`Process::resume`]. Meanwhile time goes on, so on resuming its timers
//!   fire late and its sockets' buffered data arrives at once, as after a
//!   long garbage-collection pause or a `SIGSTOP`.
//!
//! Instants are local: an [`Instant`] is only meaningful to the process
//! that read it (one node never sends an instant to another).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::task::futures::TaskLocalFuture;

tokio::task_local! {
    /// The process the current task belongs to (unset or `None`: real time).
    static PROCESS: Option<Process>;
}

/// Rates are in parts per million of real speed.
const MILLION: u128 = 1_000_000;

/// A long way off: where deadlines that cannot be represented end up.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// One simulated process: a clock rate and a pause switch, shared by all of
/// a node's tasks. Cheap to clone; clones are the same process.
#[derive(Clone)]
pub struct Process {
    inner: Arc<Inner>,
}

struct Inner {
    /// Local clock speed: `MILLION + rate_ppm` local nanoseconds per
    /// `MILLION` real ones (always positive).
    scale: u128,
    rate_ppm: i32,
    /// Real instant at which local time started (local = real there).
    origin: tokio::time::Instant,
    gate: Mutex<Gate>,
}

#[derive(Default)]
struct Gate {
    paused: bool,
    /// Tasks that were ready while paused.
    waiting: Vec<Waker>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("rate_ppm", &self.inner.rate_ppm)
            .field("paused", &self.is_paused())
            .finish()
    }
}

impl Process {
    /// A running process whose clock runs at `1 + rate_ppm / 1e6` times
    /// real speed (e.g. `-10_000`: 1 % slow), starting now. Rates are
    /// clamped to `-999_999..=1_000_000` (a clock never stops or runs
    /// backwards). Create it inside the runtime whose time it scales (with
    /// turmoil: inside the host).
    pub fn new(rate_ppm: i32) -> Self {
        let rate_ppm = rate_ppm.clamp(-999_999, 1_000_000);
        let scale = u128::try_from(i64::from(rate_ppm) + 1_000_000).unwrap_or(MILLION);
        Self {
            inner: Arc::new(Inner {
                scale,
                rate_ppm,
                origin: tokio::time::Instant::now(),
                gate: Mutex::new(Gate::default()),
            }),
        }
    }

    /// The clock rate, in parts per million away from real speed.
    pub fn rate_ppm(&self) -> i32 {
        self.inner.rate_ppm
    }

    /// Freezes the process: none of its tasks is polled until
    /// [`Process::resume`]. Its timers and sockets keep filling up.
    pub fn pause(&self) {
        self.inner.gate().paused = true;
    }

    /// Lets the process run again; everything that became ready meanwhile
    /// runs at once.
    pub fn resume(&self) {
        let waiting = {
            let mut gate = self.inner.gate();
            gate.paused = false;
            std::mem::take(&mut gate.waiting)
        };
        for waker in waiting {
            waker.wake();
        }
    }

    /// Whether the process is paused.
    pub fn is_paused(&self) -> bool {
        self.inner.gate().paused
    }

    /// This process's local time now.
    pub fn now(&self) -> Instant {
        Instant(self.inner.local_now())
    }

    /// Runs `future` as part of this process: inside it, [`Instant::now`]
    /// and the timers here follow this process's clock and [`spawn`] spawns
    /// into this process; while the process is paused the future is not
    /// polled.
    pub fn run<F: Future>(&self, future: F) -> InProcess<F> {
        InProcess {
            process: self.clone(),
            future: Box::pin(future),
        }
    }

    /// Runs `f` on this process's clock (not subject to pauses: a caller
    /// outside the process asking it something).
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        PROCESS.sync_scope(Some(self.clone()), f)
    }
}

impl Inner {
    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a task of this process may run; if not, it is woken on
    /// resume.
    fn admit(&self, waker: &Waker) -> bool {
        let mut gate = self.gate();
        if !gate.paused {
            return true;
        }
        if !gate.waiting.iter().any(|w| w.will_wake(waker)) {
            gate.waiting.push(waker.clone());
        }
        false
    }

    fn local_now(&self) -> tokio::time::Instant {
        let real = tokio::time::Instant::now();
        let elapsed = real.saturating_duration_since(self.origin).as_nanos();
        add(self.origin, nanos(elapsed * self.scale / MILLION))
    }

    /// Real time for a local span, rounded up.
    fn real_span(&self, local: Duration) -> Duration {
        nanos((local.as_nanos() * MILLION).div_ceil(self.scale))
    }

    /// The real instant at which local time reaches `local` (rounded up).
    fn real_instant(&self, local: tokio::time::Instant) -> tokio::time::Instant {
        match local.checked_duration_since(self.origin) {
            Some(after) => add(self.origin, self.real_span(after)),
            None => {
                let before = self.origin.duration_since(local).as_nanos();
                self.origin
                    .checked_sub(nanos(before * MILLION / self.scale))
                    .unwrap_or(local)
            }
        }
    }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

fn add(at: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    at.checked_add(d)
        .or_else(|| tokio::time::Instant::now().checked_add(FAR))
        .unwrap_or(at)
}

/// A future running inside a [`Process`] (see [`Process::run`]).
pub struct InProcess<F> {
    process: Process,
    future: Pin<Box<F>>,
}

impl<F> std::fmt::Debug for InProcess<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for InProcess<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if !this.process.inner.admit(cx.waker()) {
            return Poll::Pending;
        }
        let future = this.future.as_mut();
        PROCESS.sync_scope(Some(this.process.clone()), || future.poll(cx))
    }
}

/// The process the current task runs in, if any.
pub fn current() -> Option<Process> {
    PROCESS.try_with(|p| p.clone()).ok().flatten()
}

/// `f` applied to the current task's process, if it has one.
fn in_current<R>(f: impl FnOnce(&Process) -> R) -> Option<R> {
    PROCESS.try_with(|p| p.as_ref().map(f)).ok().flatten()
}

/// Runs `future` with `process` as its process (`None`: real time), without
/// pausing it (see [`Process::run`] for that).
pub fn scope<F: Future>(
    process: Option<Process>,
    future: F,
) -> TaskLocalFuture<Option<Process>, F> {
    PROCESS.scope(process, future)
}

/// Spawns `future` on tokio, inside the current task's process if it has
/// one (same clock, paused with it).
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current() {
        Some(process) => tokio::spawn(process.run(future)),
        None => tokio::spawn(future),
    }
}

/// Waits for `duration` of the current process's time.
pub fn sleep(duration: Duration) -> tokio::time::Sleep {
    tokio::time::sleep(real_span(duration))
}

/// Waits until the current process's clock reads `deadline`.
pub fn sleep_until(deadline: Instant) -> tokio::time::Sleep {
    tokio::time::sleep_until(deadline.real())
}

/// Bounds `future` by `duration` of the current process's time.
pub fn timeout<F: Future>(duration: Duration, future: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(real_span(duration), future)
}

/// Bounds `future` until the current process's clock reads `deadline`.
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout_at(deadline.real(), future)
}

/// An interval of `period` of the current process's time, first tick at
/// once (as [`tokio::time::interval`]).
pub fn interval(period: Duration) -> tokio::time::Interval {
    tokio::time::interval(real_span(period).max(Duration::from_nanos(1)))
}

fn real_span(local: Duration) -> Duration {
    in_current(|p| p.inner.real_span(local)).unwrap_or(local)
}

/// An instant of a node's own clock (see the module docs); outside a
/// [`Process`], tokio's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(tokio::time::Instant);

impl Instant {
    /// The current process's time now.
    pub fn now() -> Instant {
        Instant(in_current(|p| p.inner.local_now()).unwrap_or_else(tokio::time::Instant::now))
    }

    /// Time passed since `self` (zero if `self` is later).
    pub fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(*self)
    }

    /// Time from `earlier` to `self` (zero if `earlier` is later).
    pub fn duration_since(&self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }

    /// Time from `earlier` to `self` (zero if `earlier` is later).
    pub fn saturating_duration_since(&self, earlier: Instant) -> Duration {
        self.0.saturating_duration_since(earlier.0)
    }

    /// `self + d`, if representable.
    pub fn checked_add(&self, d: Duration) -> Option<Instant> {
        self.0.checked_add(d).map(Instant)
    }

    /// `self - d`, if representable.
    pub fn checked_sub(&self, d: Duration) -> Option<Instant> {
        self.0.checked_sub(d).map(Instant)
    }

    /// The real (tokio) instant at which the current process's clock reads
    /// `self`.
    fn real(self) -> tokio::time::Instant {
        in_current(|p| p.inner.real_instant(self.0)).unwrap_or(self.0)
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;

    fn add(self, d: Duration) -> Instant {
        Instant(add(self.0, d))
    }
}

impl std::ops::AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl std::ops::Sub<Duration> for Instant {
    type Output = Instant;

    fn sub(self, d: Duration) -> Instant {
        self.checked_sub(d).unwrap_or(self)
    }
}

impl std::ops::SubAssign<Duration> for Instant {
    fn sub_assign(&mut self, d: Duration) {
        *self = *self - d;
    }
}

impl std::ops::Sub<Instant> for Instant {
    type Output = Duration;

    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl openraft::Instant for Instant {
    fn now() -> Self {
        Instant::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_fast_clock_runs_fast_and_its_timers_fire_on_local_time() {
        let fast = Process::new(10_000);
        fast.run(async {
            let t0 = Instant::now();
            let real0 = tokio::time::Instant::now();
            sleep(Duration::from_millis(1010)).await;
            let local = Instant::now() - t0;
            let real = real0.elapsed();
            assert!(local >= Duration::from_millis(1010), "{local:?}");
            assert!(local < Duration::from_millis(1012), "{local:?}");
            assert!(real >= Duration::from_millis(1000), "{real:?}");
            assert!(real < Duration::from_millis(1002), "{real:?}");
            let deadline = Instant::now() + Duration::from_millis(505);
            sleep_until(deadline).await;
            assert!(Instant::now() >= deadline);
            let timed_out = timeout(Duration::from_millis(101), std::future::pending::<()>()).await;
            assert!(timed_out.is_err());
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_clock_never_fires_early() {
        let slow = Process::new(-10_000);
        slow.run(async {
            for ms in [1u64, 7, 99, 990, 1000] {
                let deadline = Instant::now() + Duration::from_millis(ms);
                sleep_until(deadline).await;
                assert!(Instant::now() >= deadline);
            }
            let t0 = tokio::time::Instant::now();
            sleep(Duration::from_millis(990)).await;
            assert!(t0.elapsed() >= Duration::from_millis(1000));
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_process_runs_nothing_and_catches_up_on_resume() {
        let p = Process::new(0);
        let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let seen = ticks.clone();
        let task = p.clone().run(async move {
            spawn(async move {
                loop {
                    sleep(Duration::from_millis(10)).await;
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
            .await
        });
        let handle = tokio::spawn(task);
        tokio::time::sleep(Duration::from_millis(105)).await;
        let before = ticks.load(std::sync::atomic::Ordering::SeqCst);
        assert!(before >= 9, "{before}");
        p.pause();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(ticks.load(std::sync::atomic::Ordering::SeqCst), before);
        p.resume();
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The overdue sleep ends at once, as a late timer does.
        assert_eq!(ticks.load(std::sync::atomic::Ordering::SeqCst), before + 1);
        handle.abort();
    }

    /// Protocol code measures time on the node's clock and spawns into the
    /// node's process: tokio's clock, timers and `spawn` appear only here.
    #[test]
    fn protocol_code_uses_the_node_clock() {
        fn visit(dir: &std::path::Path, found: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    visit(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("clock.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    for (n, line) in text.lines().enumerate() {
                        let code = line.split("//").next().unwrap_or("");
                        for bad in [
                            "tokio::time::Instant",
                            "std::time::Instant",
                            "tokio::time::sleep",
                            "tokio::time::timeout",
                            "tokio::time::interval",
                            "tokio::spawn",
                            "task::spawn",
                        ] {
                            if code.contains(bad) {
                                found.push(format!("{}:{}: {bad}", path.display(), n + 1));
                            }
                        }
                    }
                }
            }
        }
        let mut found = Vec::new();
        visit(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        assert!(
            found.is_empty(),
            "use crate::clock instead (a simulated node's clock rate and pauses): {found:#?}"
        );
    }

    #[test]
    fn outside_a_process_time_is_tokios() {
        assert!(current().is_none());
        assert_eq!(
            real_span(Duration::from_millis(5)),
            Duration::from_millis(5)
        );
        let p = Process::new(-10_000);
        let span = p.enter(|| real_span(Duration::from_millis(990)));
        assert_eq!(span, Duration::from_millis(1000));
        assert_eq!(Process::new(i32::MIN).rate_ppm(), -999_999);
    }
}

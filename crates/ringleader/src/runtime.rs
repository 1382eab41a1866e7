//! Sources of randomness and wall-clock time, and the async runtime openraft
//! runs on, gathered here so a deterministic simulator can control them.
//!
//! Normal use changes nothing: the random source is a per-thread
//! cryptographically strong generator seeded from OS entropy (as
//! `rand::rng()` is), the wall clock is [`SystemTime`], and [`RaftRuntime`]
//! is openraft's tokio runtime with only its random source replaced by the
//! one here. A simulator that runs every node on one thread calls
//! [`seed_thread_rng`] before starting them and supplies a [`WallClock`]
//! derived from simulated time (see `crates/ringleader-sim`).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::sync::watch;

thread_local! {
    static RNG: RefCell<StdRng> = RefCell::new(StdRng::from_os_rng());
}

/// Reseeds this thread's random source. Everything ringleader draws on this
/// thread afterwards (node ids, handshake nonces, openraft's election
/// timeouts) follows from `seed`. For simulation and tests only: with a
/// fixed seed, node ids and nonces become predictable.
pub fn seed_thread_rng(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = StdRng::seed_from_u64(seed));
}

/// Runs `f` with this thread's random source.
pub fn with_thread_rng<R>(f: impl FnOnce(&mut StdRng) -> R) -> R {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

/// A random value from this thread's random source.
pub fn random<T>() -> T
where
    rand::distr::StandardUniform: rand::distr::Distribution<T>,
{
    with_thread_rng(|r| r.random())
}

/// Seconds and nanoseconds since the Unix epoch, as a host's wall clock
/// tells them. Only the creation stamp of a new cluster life reads it
/// (`crate::token`).
pub type WallClock = Arc<dyn Fn() -> Duration + Send + Sync>;

/// The real wall clock ([`SystemTime`]).
pub fn system_clock() -> WallClock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    })
}

/// openraft's view of this thread's random source (openraft 0.9 uses the
/// `rand` 0.8 traits; this forwards to the generator above).
#[derive(Debug, Default, Clone, Copy)]
pub struct RaftRng;

impl rand08::RngCore for RaftRng {
    fn next_u32(&mut self) -> u32 {
        with_thread_rng(|r| r.next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        with_thread_rng(|r| r.next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        with_thread_rng(|r| r.fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// openraft's tokio runtime, except that its random source (election
/// timeouts) is this thread's generator, which a simulator can seed, and
/// that its clock, timers and tasks are the node's ([`crate::clock`]): a
/// simulated node's openraft runs at that node's clock rate and is paused
/// with it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RaftRuntime;

impl AsyncRuntime for RaftRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = RaftSleep;
    type Instant = crate::clock::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = RaftRng;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        // Every task openraft spawns for a node inherits the node's tick gate.
        match TICK_GATE.try_with(|gate| gate.clone()) {
            Ok(gate) => crate::clock::spawn(TICK_GATE.scope(gate, future)),
            Err(_) => crate::clock::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Box::pin(crate::clock::sleep(duration))
    }

    /// openraft 0.9 calls `sleep_until` in one place only: the loop that
    /// sends its core a tick every 1.5 x `heartbeat_interval`
    /// (`core/tick.rs`; everything else uses `sleep` or `timeout`). So this
    /// is where a node's [`TickGate`] holds the tick back while it is shut.
    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        let sleep = crate::clock::sleep_until(deadline);
        match TICK_GATE.try_with(|gate| gate.clone()) {
            Ok(gate) => Box::pin(async move {
                sleep.await;
                gate.pass().await;
            }),
            Err(_) => Box::pin(sleep),
        }
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        crate::clock::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        crate::clock::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        RaftRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        TokioRuntime::oneshot()
    }
}

/// What [`RaftRuntime`]'s sleeps return: a boxed future, so the tick's sleep
/// can also wait on the node's [`TickGate`].
pub type RaftSleep = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

tokio::task_local! {
    /// The tick gate of the node the current task belongs to, if any.
    static TICK_GATE: TickGate;
}

/// When a node's openraft needs its periodic tick.
///
/// openraft wakes every node each 1.5 x `heartbeat_interval` (75 ms by
/// default) to check its election timeout, send heartbeats (switched off
/// here) and step down after its own removal. With tokio's timer wheel each
/// tick costs two or three wake-ups, which were most of an idle node's
/// CPU, and most ticks find nothing to do:
///
/// - a learner, or a node outside the membership, never campaigns: the
///   gate is shut and the tick waits, without a timer, until the node
///   becomes a voter ([`TickSwitch::set_needed`]);
/// - a voter that just accepted an AppendEntries from its leader cannot
///   campaign before openraft's leader lease plus its election timeout
///   have passed: the tick is held ([`TickSwitch::hold_until`], for
///   [`follower_tick_hold`]) and runs every interval from the hold's end.
///
/// Holding a tick back only delays when openraft looks, never to before the
/// first instant it could act and never by more than a tick interval past
/// its election deadline; it changes no safety argument.
#[derive(Clone, Debug)]
pub struct TickGate {
    needed: watch::Receiver<bool>,
    hold: Arc<Mutex<Option<crate::clock::Instant>>>,
}

/// The node's side of its [`TickGate`].
#[derive(Debug)]
pub struct TickSwitch {
    needed: watch::Sender<bool>,
    hold: Arc<Mutex<Option<crate::clock::Instant>>>,
}

impl TickGate {
    /// A gate and its switch; the gate is open at first.
    pub fn new() -> (TickSwitch, TickGate) {
        let (tx, rx) = watch::channel(true);
        let hold = Arc::new(Mutex::new(None));
        (
            TickSwitch {
                needed: tx,
                hold: hold.clone(),
            },
            TickGate { needed: rx, hold },
        )
    }

    /// Runs `future` (which should create the node's `openraft::Raft`) so
    /// that every task openraft spawns from it obeys this gate.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        TICK_GATE.scope(self, future)
    }

    /// Waits until the tick may run: the gate is open and no hold is left.
    async fn pass(mut self) {
        loop {
            if self.needed.wait_for(|needed| *needed).await.is_err() {
                // The node is gone: no more ticks; openraft's shutdown
                // cancels the loop waiting here.
                std::future::pending::<()>().await;
            }
            let hold = *self.hold.lock().unwrap_or_else(|e| e.into_inner());
            match hold {
                Some(until) if until > crate::clock::Instant::now() => {
                    crate::clock::sleep_until(until).await;
                }
                _ => return,
            }
        }
    }
}

impl TickSwitch {
    /// Opens (`true`) or shuts the gate.
    pub fn set_needed(&self, needed: bool) {
        self.needed
            .send_if_modified(|open| std::mem::replace(open, needed) != needed);
    }

    /// Holds the tick until `until` (node clock), unless already held
    /// longer. For a voter that accepted an AppendEntries at `now`:
    /// `now +` [`follower_tick_hold`].
    pub fn hold_until(&self, until: crate::clock::Instant) {
        let mut hold = self.hold.lock().unwrap_or_else(|e| e.into_inner());
        if hold.is_none_or(|h| h < until) {
            *hold = Some(until);
        }
    }
}

/// How long after accepting an AppendEntries a follower's openraft tick is
/// held ([`TickSwitch::hold_until`]), for election timeouts drawn from
/// `[min, max)` and openraft's `heartbeat_interval` `raft_heartbeat`.
///
/// openraft 0.9 campaigns at the first tick at least `max` (its leader
/// lease) plus its own election timeout (drawn once in `[min, max)`, and
/// not visible to us) after the last accepted AppendEntries; its ticks come
/// every 1.5 x `raft_heartbeat` on their own schedule, so it starts an
/// election up to one tick interval after that deadline. A held tick runs
/// at the end of the hold and then every interval from there:
///
/// - when `max - min` is at most one tick interval, a hold of `2 x max`
///   ends at or after every possible deadline, so the election starts at
///   most `max - min` after its deadline (up to 50 ms with the defaults,
///   where openraft's own ticks could be 75 ms late);
/// - otherwise the hold ends at the earliest possible deadline, `max +
///   min`, and the ticks after it are at most one interval late, as
///   openraft's own are.
///
/// Either way the hold never ends before the earliest instant openraft
/// could campaign, so holding changes only when a tick happens, never what
/// openraft decides at it.
pub fn follower_tick_hold(min: Duration, max: Duration, raft_heartbeat: Duration) -> Duration {
    let tick = raft_heartbeat.saturating_mul(3) / 2;
    if max.saturating_sub(min) <= tick {
        max.saturating_mul(2)
    } else {
        max.saturating_add(min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeding_makes_draws_repeat() {
        seed_thread_rng(7);
        let a: [u64; 4] = [random(), random(), random(), random()];
        seed_thread_rng(7);
        let b: [u64; 4] = [random(), random(), random(), random()];
        assert_eq!(a, b);
        let mut rng = RaftRng;
        let x = rand08::Rng::gen_range(&mut rng, 150u64..200);
        assert!((150..200).contains(&x));
    }

    use crate::clock::Instant;

    /// Whether `future` finishes within `within` of (paused) tokio time.
    async fn finishes_within(future: impl Future<Output = ()>, within: Duration) -> bool {
        crate::clock::timeout(within, future).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_shut_gate_holds_the_tick_until_it_opens() {
        let (switch, gate) = TickGate::new();
        switch.set_needed(false);
        // A task openraft spawns inherits the gate.
        let handle = gate
            .scope(async {
                let handle = RaftRuntime::spawn(async {
                    RaftRuntime::sleep_until(Instant::now() + Duration::from_millis(75)).await;
                });
                Ok::<_, ()>(handle)
            })
            .await
            .unwrap();
        crate::clock::sleep(Duration::from_secs(5)).await;
        assert!(!handle.is_finished(), "a tick ran with the gate shut");
        switch.set_needed(true);
        assert!(finishes_within(async { handle.await.unwrap() }, Duration::from_millis(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_delays_the_tick_to_its_end_and_no_further() {
        let (switch, gate) = TickGate::new();
        let start = Instant::now();
        switch.hold_until(start + Duration::from_millis(350));
        // An earlier hold does not shorten a later one.
        switch.hold_until(start + Duration::from_millis(100));
        gate.clone()
            .scope(async { RaftRuntime::sleep_until(start + Duration::from_millis(75)).await })
            .await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(350) && waited < Duration::from_millis(360),
            "{waited:?}"
        );
        // Once the hold is over, ticks keep their own schedule.
        let again = Instant::now();
        gate.scope(async { RaftRuntime::sleep_until(again + Duration::from_millis(75)).await })
            .await;
        assert_eq!(again.elapsed(), Duration::from_millis(75));
    }

    /// The first tick a hold lets through, for a tick loop that started at
    /// zero with interval `tick`: the hold's end if the loop was waiting on
    /// it (ticks every `tick` from there), as the gate runs it.
    fn first_tick_at_or_after(deadline: Duration, hold: Duration, tick: Duration) -> Duration {
        let mut at = hold;
        while at < deadline {
            at += tick;
        }
        at
    }

    #[test]
    fn a_follower_s_hold_never_ends_before_openraft_could_campaign() {
        let ms = Duration::from_millis;
        for (min, max, hb) in [
            (150, 200, 50),
            (150, 300, 50),
            (60, 80, 20),
            (400, 600, 100),
            (150, 151, 50),
        ] {
            let (min, max, hb) = (ms(min), ms(max), ms(hb));
            let hold = follower_tick_hold(min, max, hb);
            let tick = hb * 3 / 2;
            assert!(
                hold >= max + min,
                "{hold:?} ends before the earliest election"
            );
            // Whatever timeout openraft drew, the election starts no later
            // than one tick interval after its deadline.
            let mut timeout = min;
            while timeout < max {
                let deadline = max + timeout;
                let late = first_tick_at_or_after(deadline, hold, tick) - deadline;
                assert!(
                    late <= tick,
                    "{late:?} late for {timeout:?} ({min:?}-{max:?})"
                );
                timeout += ms(1);
            }
        }
        // The defaults: held to 400 ms, so at most 50 ms late, not 75.
        assert_eq!(follower_tick_hold(ms(150), ms(200), ms(50)), ms(400));
        assert_eq!(follower_tick_hold(ms(150), ms(300), ms(50)), ms(450));
    }

    #[tokio::test(start_paused = true)]
    async fn outside_a_gate_sleeps_are_plain() {
        let start = Instant::now();
        RaftRuntime::sleep_until(start + Duration::from_millis(75)).await;
        RaftRuntime::sleep(Duration::from_millis(25)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }
}

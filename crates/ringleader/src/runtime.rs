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
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

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
    type Sleep = tokio::time::Sleep;
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
        crate::clock::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        crate::clock::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        crate::clock::sleep_until(deadline)
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
}

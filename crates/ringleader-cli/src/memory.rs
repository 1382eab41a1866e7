//! Gives freed heap memory back to the operating system after a burst.
//!
//! glibc's allocator keeps memory freed in the middle of its heap: after a
//! flood of HTTP or peer connections ends (slowloris, hundreds of event
//! streams), a node measured here stayed at 44 MB of RSS instead of its
//! 10 MB. `malloc_trim(0)` hands those free pages back. The node reads its
//! RSS every [`PERIOD`] and trims when it is more than [`GROWTH`] above the
//! lowest seen ([`Trimmer`]), at most once per [`RETRY`] while it stays
//! there, so an idle node does nothing but read `/proc/self/statm`.
//! (mimalloc, measured instead, started at 23 MB.)

use std::time::Duration;

/// How often RSS is checked.
pub const PERIOD: Duration = Duration::from_secs(5);

/// RSS above the lowest seen that makes a trim worth trying.
pub const GROWTH: u64 = 4 * 1024 * 1024;

/// After a trim, the next one waits this long unless RSS moved by
/// [`GROWTH`] meanwhile: memory still in use (a flood still going on) is not
/// worth trimming every period.
pub const RETRY: Duration = Duration::from_secs(15);

/// This process's resident set size in bytes, from `/proc/self/statm`.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// When to trim: a pure function of RSS readings and time.
#[derive(Debug, Clone, Default)]
pub struct Trimmer {
    /// The lowest RSS seen (after a trim, or at rest).
    floor: Option<u64>,
    /// RSS before the last trim, and when it ran.
    last: Option<(u64, std::time::Instant)>,
}

impl Trimmer {
    /// Whether to trim now, at `rss` bytes: RSS is over the floor by more
    /// than [`GROWTH`], and either no trim ran yet, RSS moved by more than
    /// [`GROWTH`] since the last one, or [`RETRY`] has passed.
    pub fn should_trim(&mut self, rss: u64, now: std::time::Instant) -> bool {
        let floor = *self.floor.get_or_insert(rss);
        if rss < floor {
            self.floor = Some(rss);
            return false;
        }
        if rss <= floor.saturating_add(GROWTH) {
            return false;
        }
        match self.last {
            None => true,
            Some((before, at)) => rss.abs_diff(before) > GROWTH || now.duration_since(at) >= RETRY,
        }
    }

    /// Records a trim that ran at `before` bytes and left `after`.
    pub fn trimmed(&mut self, before: u64, after: u64, now: std::time::Instant) {
        self.last = Some((before, now));
        self.floor = Some(self.floor.map_or(after, |f| f.min(after)));
    }
}

/// Returns free heap pages to the operating system (glibc only; elsewhere
/// nothing).
#[allow(unsafe_code)]
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks the allocator's
    // own free lists under the allocator's lock and madvises free pages
    // away. It is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Checks RSS every [`PERIOD`] and trims when [`Trimmer`] says so, forever.
pub async fn keep_trimmed() {
    let mut trimmer = Trimmer::default();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(rss) = rss_bytes() else { return };
        let now = std::time::Instant::now();
        if trimmer.should_trim(rss, now) {
            trim();
            let after = rss_bytes().unwrap_or(rss);
            tracing::debug!(before = rss, after, "returned free heap memory");
            trimmer.trimmed(rss, after, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_growth_and_retries_a_flood_later() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mb = |n: u64| n << 20;
        let mut t = Trimmer::default();
        assert!(!t.should_trim(mb(10), at(0)));
        assert!(!t.should_trim(mb(14), at(5)));
        // A flood: trim once while it holds its memory...
        assert!(t.should_trim(mb(34), at(10)));
        t.trimmed(mb(34), mb(34), at(10));
        // ...not again every period while nothing changes...
        assert!(!t.should_trim(mb(34), at(15)));
        assert!(!t.should_trim(mb(34), at(20)));
        // ...but once it is over (RETRY later), and the floor holds.
        assert!(t.should_trim(mb(34), at(25)));
        t.trimmed(mb(34), mb(11), at(25));
        assert!(!t.should_trim(mb(12), at(30)));
        // Growth by more than GROWTH since the last try: at once.
        assert!(t.should_trim(mb(40), at(31)));
        assert!(rss_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn a_trim_returns_freed_memory() {
        // 64 MiB in small blocks, then one more block above them that stays:
        // the freed blocks sit below it, where glibc keeps them untrimmed.
        let blocks: Vec<Vec<u8>> = (0..16 * 1024).map(|_| vec![1u8; 4096]).collect();
        let pin = vec![1u8; 4096];
        let full = rss_bytes().unwrap();
        drop(blocks);
        let freed = rss_bytes().unwrap();
        trim();
        let trimmed = rss_bytes().unwrap();
        assert!(
            trimmed + (32 << 20) < freed,
            "{full} -> {freed} -> {trimmed}"
        );
        drop(pin);
    }
}

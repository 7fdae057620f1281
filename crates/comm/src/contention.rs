//! Whether the calling thread has a core to itself, read from the
//! kernel's account of how long it waited to run (the second field of
//! `/proc/thread-self/schedstat`, its run delay in nanoseconds) and how
//! many times it was put on a core (the third field).
//!
//! A thread that waited for a core in a recent window shares it with
//! another runnable thread (more ranks than cores, or a busy machine):
//! there a spinning waiter takes time its peer may need. A thread that
//! never waited can spin for as long as a peer usually takes, which saves
//! a wake-up (tens of microseconds, a millisecond or more for an idle
//! virtual CPU) per message. Where the file cannot be
//! read the answer is always "shared", the safe side.
//!
//! Every wake-up from a sleep adds its own latency to the run delay (on a
//! virtual machine 10-20 us, with the core idle), and a thread judged
//! "shared" sleeps on most waits: counted as contention, those wake-ups
//! alone kept a pinned rank "shared" for good at 2,000 sleeps a second.
//! So each time the thread was put on a core excuses `WAKE_ALLOWANCE` of
//! its delay; a thread that really shares its core waits for another's
//! time slice, milliseconds at a time.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// A window's run delay (less what wake-ups excuse) above this share of
/// its length means the core is shared. A thread that shares its core
/// with another busy one waits a third to a half of the time; a lone one
/// waits only for the kernel's own threads, which on the dev VM come in
/// bursts of 1-2 ms (a 20 ms window at a 3% threshold turned one burst
/// into a second of "shared").
const SHARED_SHARE: f64 = 0.10;
/// How long a window lasts while the core looks free: short, so that a
/// machine that becomes busy is noticed within a few tens of spins.
const FREE_WINDOW: Duration = Duration::from_millis(50);
/// The run delay one wake-up may add without the core counting as
/// shared: well above a wake-up's latency on an idle core, well below a
/// scheduler's time slice.
const WAKE_ALLOWANCE: Duration = Duration::from_micros(30);
/// How long a "shared" verdict holds before the next window: long, since
/// the waiting that spinning itself causes goes away once it stops, and
/// each new look costs a window of spinning.
const SHARED_HOLD: Duration = Duration::from_secs(1);

struct Watch {
    /// `None` once the file proved unreadable.
    file: Option<File>,
    /// When the current window began, and the reading then.
    start: Option<(Instant, Sched)>,
    shared: bool,
    next_look: Instant,
}

thread_local! {
    static WATCH: RefCell<Option<Watch>> = const { RefCell::new(None) };
}

/// Whether this thread shares its core, as of its latest window. The
/// first window starts at the first call; until it ends the answer is
/// "shared".
pub(crate) fn core_shared() -> bool {
    WATCH.with(|w| {
        let mut w = w.borrow_mut();
        let now = Instant::now();
        let watch = w.get_or_insert_with(|| Watch::new(now));
        if now >= watch.next_look {
            let reading = watch.file.as_ref().and_then(read_sched);
            watch.look(now, reading);
        }
        watch.shared
    })
}

impl Watch {
    fn new(now: Instant) -> Watch {
        Watch {
            file: File::open("/proc/thread-self/schedstat").ok(),
            start: None,
            shared: true,
            next_look: now,
        }
    }

    /// Ends the current window (if one is open) with a verdict and opens
    /// the next one, given the thread's reading now (`None`: unreadable).
    fn look(&mut self, now: Instant, reading: Option<Sched>) {
        let Some(reading) = reading else {
            self.file = None;
            self.shared = true;
            self.next_look = now + Duration::from_secs(3600);
            return;
        };
        if let Some((t0, r0)) = self.start.take() {
            let window = now.duration_since(t0).as_nanos() as f64;
            let delay = reading.delay_ns.saturating_sub(r0.delay_ns);
            let excused =
                reading.slices.saturating_sub(r0.slices) * WAKE_ALLOWANCE.as_nanos() as u64;
            self.shared = delay.saturating_sub(excused) as f64 > SHARED_SHARE * window;
            if self.shared {
                self.next_look = now + SHARED_HOLD;
                return;
            }
        }
        self.start = Some((now, reading));
        self.next_look = now + FREE_WINDOW;
    }
}

/// A thread's schedstat: how long it has waited to run, and how many
/// times it was put on a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sched {
    delay_ns: u64,
    slices: u64,
}

/// A schedstat file's "cpu_ns delay_ns slices".
fn read_sched(file: &File) -> Option<Sched> {
    let mut buf = [0u8; 96];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let mut fields = text.split_ascii_whitespace().skip(1);
    Some(Sched {
        delay_ns: fields.next()?.parse().ok()?,
        slices: fields.next()?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(now: Instant) -> Watch {
        Watch {
            file: None,
            start: None,
            shared: true,
            next_look: now,
        }
    }

    fn at(delay_ns: u64, slices: u64) -> Option<Sched> {
        Some(Sched { delay_ns, slices })
    }

    #[test]
    fn a_window_without_waiting_frees_the_core_and_one_with_waiting_shares_it() {
        let t = Instant::now();
        let mut w = watch(t);
        w.look(t, at(1_000, 0));
        assert!(w.shared, "no verdict before a window ends");
        assert_eq!(w.next_look, t + FREE_WINDOW);
        // 50 ms with 0.1 ms of waiting: free.
        let t1 = t + FREE_WINDOW;
        w.look(t1, at(101_000, 1));
        assert!(!w.shared);
        assert_eq!(w.next_look, t1 + FREE_WINDOW);
        // The next 50 ms with 6 ms of waiting: shared, and held.
        let t2 = t1 + FREE_WINDOW;
        w.look(t2, at(6_101_000, 3));
        assert!(w.shared);
        assert_eq!(w.next_look, t2 + SHARED_HOLD);
        // After the hold a new window opens; the verdict stays until it ends.
        let t3 = t2 + SHARED_HOLD;
        w.look(t3, at(19_000_000, 10));
        assert!(w.shared);
        w.look(t3 + FREE_WINDOW, at(19_000_000, 10));
        assert!(!w.shared);
    }

    #[test]
    fn wake_up_latency_is_not_contention() {
        let t = Instant::now();
        let mut w = watch(t);
        w.look(t, at(0, 0));
        // 50 ms, 400 wake-ups of 15 us each: 6 ms of delay, 12% of the
        // window, all of it excused.
        w.look(t + FREE_WINDOW, at(6_000_000, 400));
        assert!(!w.shared);
        // The same delay in 3 slices: another thread held the core.
        w.look(t + 2 * FREE_WINDOW, at(12_000_000, 403));
        assert!(w.shared);
        // A 2 ms burst of a kernel thread: still free.
        w.look(t + 3 * FREE_WINDOW, at(12_000_000, 403));
        w.look(t + 4 * FREE_WINDOW, at(14_000_000, 404));
        assert!(!w.shared);
    }

    #[test]
    fn an_unreadable_run_delay_keeps_the_core_shared() {
        let t = Instant::now();
        let mut w = watch(t);
        w.look(t, at(0, 0));
        w.look(t + FREE_WINDOW, at(0, 0));
        assert!(!w.shared);
        w.look(t + 2 * FREE_WINDOW, None);
        assert!(w.shared);
        assert!(w.next_look > t + SHARED_HOLD);
    }

    #[test]
    fn schedstat_reads_the_second_and_third_fields() {
        let path = std::env::temp_dir().join(format!("schedstat-{}", std::process::id()));
        std::fs::write(&path, "1234916 5678 12\n").unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(read_sched(&file), at(5678, 12));
        std::fs::write(&path, "1234916 5678\n").unwrap();
        assert_eq!(read_sched(&file), None);
        std::fs::write(&path, "garbage\n").unwrap();
        assert_eq!(read_sched(&file), None);
        std::fs::remove_file(&path).unwrap();
    }
}

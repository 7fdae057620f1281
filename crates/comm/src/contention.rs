//! Whether the calling thread has a core to itself, read from the
//! kernel's account of how long it waited to run (the second field of
//! `/proc/thread-self/schedstat`, its run delay in nanoseconds).
//!
//! A thread that waited for a core in a recent window shares it with
//! another runnable thread (more ranks than cores, or a busy machine):
//! there a spinning waiter takes time its peer may need. A thread that
//! never waited can spin for as long as a peer usually takes, which saves
//! a wake-up (tens of microseconds) per message. Where the file cannot be
//! read the answer is always "shared", the safe side.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// A window's run delay above this share of its length means the core
/// is shared: a lone thread sees well under 1% (kernel work, interrupts).
const SHARED_SHARE: f64 = 0.03;
/// How long a window lasts while the core looks free: short, so that a
/// machine that becomes busy is noticed within a few tens of spins.
const FREE_WINDOW: Duration = Duration::from_millis(20);
/// How long a "shared" verdict holds before the next window: long, since
/// the waiting that spinning itself causes goes away once it stops, and
/// each new look costs a window of spinning.
const SHARED_HOLD: Duration = Duration::from_secs(1);

struct Watch {
    /// `None` once the file proved unreadable.
    file: Option<File>,
    /// When the current window began, and the run delay then.
    start: Option<(Instant, u64)>,
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
            let delay = watch.file.as_ref().and_then(run_delay);
            watch.look(now, delay);
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
    /// the next one, given the thread's run delay now (`None`: unreadable).
    fn look(&mut self, now: Instant, delay: Option<u64>) {
        let Some(delay) = delay else {
            self.file = None;
            self.shared = true;
            self.next_look = now + Duration::from_secs(3600);
            return;
        };
        if let Some((t0, d0)) = self.start.take() {
            let window = now.duration_since(t0).as_nanos() as f64;
            self.shared = delay.saturating_sub(d0) as f64 > SHARED_SHARE * window;
            if self.shared {
                self.next_look = now + SHARED_HOLD;
                return;
            }
        }
        self.start = Some((now, delay));
        self.next_look = now + FREE_WINDOW;
    }
}

/// The run delay (ns) in a schedstat file: "cpu_ns delay_ns slices".
fn run_delay(file: &File) -> Option<u64> {
    let mut buf = [0u8; 96];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
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

    #[test]
    fn a_window_without_waiting_frees_the_core_and_one_with_waiting_shares_it() {
        let t = Instant::now();
        let mut w = watch(t);
        w.look(t, Some(1_000));
        assert!(w.shared, "no verdict before a window ends");
        assert_eq!(w.next_look, t + FREE_WINDOW);
        // 20 ms with 0.1 ms of waiting: free.
        let t1 = t + FREE_WINDOW;
        w.look(t1, Some(101_000));
        assert!(!w.shared);
        assert_eq!(w.next_look, t1 + FREE_WINDOW);
        // The next 20 ms with 5 ms of waiting: shared, and held.
        let t2 = t1 + FREE_WINDOW;
        w.look(t2, Some(5_101_000));
        assert!(w.shared);
        assert_eq!(w.next_look, t2 + SHARED_HOLD);
        // After the hold a new window opens; the verdict stays until it ends.
        let t3 = t2 + SHARED_HOLD;
        w.look(t3, Some(9_000_000));
        assert!(w.shared);
        w.look(t3 + FREE_WINDOW, Some(9_000_000));
        assert!(!w.shared);
    }

    #[test]
    fn an_unreadable_run_delay_keeps_the_core_shared() {
        let t = Instant::now();
        let mut w = watch(t);
        w.look(t, Some(0));
        w.look(t + FREE_WINDOW, Some(0));
        assert!(!w.shared);
        w.look(t + 2 * FREE_WINDOW, None);
        assert!(w.shared);
        assert!(w.next_look > t + SHARED_HOLD);
    }

    #[test]
    fn run_delay_reads_the_second_field() {
        let path = std::env::temp_dir().join(format!("schedstat-{}", std::process::id()));
        std::fs::write(&path, "1234916 5678 12\n").unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(run_delay(&file), Some(5678));
        std::fs::write(&path, "garbage\n").unwrap();
        assert_eq!(run_delay(&file), None);
        std::fs::remove_file(&path).unwrap();
    }
}

//! A small fork-join pool for splitting one matrix product over cores.
//!
//! The caller thread works too, so a pool of `n` threads spawns `n - 1`.
//! Idle workers spin for at most [`SPIN`] (consecutive matmuls of one
//! forward pass arrive microseconds apart) and then sleep on a condvar, so
//! a pool never burns a core that other ranks or comm's I/O thread need.
//!
//! A job is a closure on the caller's stack. Workers enter it through
//! `state` (a count of workers inside plus a CLOSED bit); the caller closes
//! the job when every task is claimed and returns only once no worker is
//! inside, so a worker that wakes late never touches a dead closure and
//! never delays the caller either.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker (or the caller waiting for stragglers) spins
/// before sleeping.
pub const SPIN: Duration = Duration::from_micros(50);

const CLOSED: usize = 1 << (usize::BITS - 1);

struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
}

struct Shared {
    generation: AtomicU64,
    state: AtomicUsize,
    job: AtomicPtr<Job<'static>>,
    next: AtomicUsize,
    sleepers: AtomicUsize,
    caller_waiting: AtomicBool,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a poisoned one is still usable.
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run_tasks(&self, job: &Job<'_>) {
        loop {
            let i = self.next.fetch_add(1, Relaxed);
            if i >= job.tasks {
                return;
            }
            if catch_unwind(AssertUnwindSafe(|| (job.task)(i))).is_err() {
                self.panicked.store(true, SeqCst);
            }
        }
    }
}

/// An output buffer the tasks of one [`ThreadPool::parallel_for`] share,
/// each writing only its own elements (distinct rows or ranges), which the
/// borrow checker cannot see through the closure.
#[derive(Clone, Copy)]
pub struct DisjointOut(*mut f32);

// SAFETY: a raw pointer to f32s; `at`'s callers promise disjoint writes.
unsafe impl Send for DisjointOut {}
unsafe impl Sync for DisjointOut {}

impl DisjointOut {
    pub fn new(out: &mut [f32]) -> Self {
        DisjointOut(out.as_mut_ptr())
    }

    /// A pointer to element `index`. Writing through it is sound only
    /// within the buffer, while it lives, and where no other task writes.
    /// (A method, so closures capture the whole Sync wrapper, not the field.)
    pub fn at(self, index: usize) -> *mut f32 {
        self.0.wrapping_add(index)
    }
}

/// A fixed set of worker threads that run parallel loops with the caller.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    submit: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `threads` threads in all, the caller included (0 counts as 1).
    pub fn new(threads: usize) -> ThreadPool {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            state: AtomicUsize::new(CLOSED),
            job: AtomicPtr::new(std::ptr::null_mut()),
            next: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            caller_waiting: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let mut workers = Vec::new();
        for i in 1..threads.max(1) {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("huddle-kernel-{i}"))
                .spawn(move || worker(&shared));
            // A thread the OS refuses only makes the pool smaller.
            if let Ok(handle) = spawned {
                workers.push(handle);
            }
        }
        ThreadPool {
            shared,
            workers,
            submit: Mutex::new(()),
        }
    }

    /// A pool sized by [`default_threads`].
    pub fn from_env() -> ThreadPool {
        ThreadPool::new(default_threads())
    }

    /// Threads that run tasks, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `task(i)` for every `i` in `0..tasks` across the pool and returns
    /// when all are done. A call made while the pool is busy (from another
    /// thread, or from inside a task) runs its tasks inline instead.
    ///
    /// # Panics
    /// Re-raises a panic from any task, after every task has finished.
    pub fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        let busy_guard = self.submit.try_lock();
        if self.workers.is_empty() || tasks <= 1 || busy_guard.is_err() {
            (0..tasks).for_each(task);
            return;
        }
        let shared = &*self.shared;
        let job = Job { task, tasks };
        shared
            .job
            .store((&raw const job).cast_mut().cast::<Job<'static>>(), Release);
        shared.next.store(0, Release);
        // Workers that peeked at the previous, closed job may still be
        // leaving; they are gone within a few instructions.
        while shared
            .state
            .compare_exchange_weak(CLOSED, 0, AcqRel, Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        shared.generation.fetch_add(1, SeqCst);
        if shared.sleepers.load(SeqCst) > 0 {
            let _guard = shared.lock();
            shared.wake.notify_all();
        }

        let own = catch_unwind(AssertUnwindSafe(|| shared.run_tasks(&job)));
        shared.state.fetch_or(CLOSED, SeqCst);
        wait_until_empty(shared);
        shared.job.store(std::ptr::null_mut(), Release);

        if let Err(payload) = own {
            resume_unwind(payload);
        }
        if shared.panicked.swap(false, SeqCst) {
            panic!("a task run by huddle-kernels' thread pool panicked");
        }
    }

    /// Splits `0..len` into ranges of at most `chunk` and runs `body` on each.
    pub fn parallel_for(&self, len: usize, chunk: usize, body: impl Fn(Range<usize>) + Sync) {
        let chunk = chunk.max(1);
        let tasks = len.div_ceil(chunk);
        self.run(tasks, &|i| body(i * chunk..((i + 1) * chunk).min(len)));
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _guard = self.shared.lock();
            self.shared.wake.notify_all();
        }
        for handle in self.workers.drain(..) {
            // A worker cannot panic (tasks run under catch_unwind); nothing to report.
            let _ = handle.join();
        }
    }
}

/// Waits, spinning briefly then sleeping, until no worker is inside the
/// closed job.
fn wait_until_empty(shared: &Shared) {
    let start = Instant::now();
    while shared.state.load(SeqCst) != CLOSED {
        if start.elapsed() > SPIN {
            shared.caller_waiting.store(true, SeqCst);
            let mut guard = shared.lock();
            while shared.state.load(SeqCst) != CLOSED {
                guard = shared
                    .done
                    .wait(guard)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            shared.caller_waiting.store(false, SeqCst);
            return;
        }
        std::hint::spin_loop();
    }
}

fn worker(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        if !wait_for_job(shared, seen) {
            return;
        }
        seen = shared.generation.load(SeqCst);
        if shared.state.fetch_add(1, SeqCst) & CLOSED == 0 {
            // SAFETY: the job is open, so the caller has published a live
            // job and will not return before this worker leaves `state`.
            let job = unsafe { &*shared.job.load(Acquire) };
            shared.run_tasks(job);
        }
        let before = shared.state.fetch_sub(1, SeqCst);
        if before == CLOSED | 1 && shared.caller_waiting.load(SeqCst) {
            let _guard = shared.lock();
            shared.done.notify_all();
        }
    }
}

/// Returns false when the pool is shutting down, true once a job newer than
/// `seen` has been published.
fn wait_for_job(shared: &Shared, seen: u64) -> bool {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        if shared.shutdown.load(Acquire) {
            return false;
        }
        if shared.generation.load(SeqCst) != seen {
            return true;
        }
        spins += 1;
        if spins.is_multiple_of(64) && start.elapsed() > SPIN {
            break;
        }
        std::hint::spin_loop();
    }
    let mut guard = shared.lock();
    shared.sleepers.fetch_add(1, SeqCst);
    while shared.generation.load(SeqCst) == seen && !shared.shutdown.load(SeqCst) {
        guard = shared
            .wake
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner);
    }
    shared.sleepers.fetch_sub(1, SeqCst);
    !shared.shutdown.load(SeqCst)
}

/// Threads a kernel pool should use in this process:
/// `HUDDLE_KERNEL_THREADS` if set to a positive number; otherwise the CPUs
/// in the affinity mask, divided among `HUDDLE_LOCAL_SIZE` ranks on this
/// host unless the mask is already narrower than the machine (a launcher or
/// `taskset` has pinned this rank, so the division is done).
pub fn default_threads() -> usize {
    let var = |name: &str| std::env::var(name).ok();
    threads_for(
        var("HUDDLE_KERNEL_THREADS").as_deref(),
        var("HUDDLE_LOCAL_SIZE").as_deref(),
        affinity_cpus(),
        online_cpus(),
    )
}

/// [`default_threads`] without the environment: unparsable or zero values
/// count as unset.
fn threads_for(
    kernel_threads: Option<&str>,
    local_size: Option<&str>,
    allowed: usize,
    online: usize,
) -> usize {
    let parse = |v: Option<&str>| {
        v.and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
    };
    if let Some(n) = parse(kernel_threads) {
        return n;
    }
    if allowed < online {
        return allowed.max(1);
    }
    (allowed / parse(local_size).unwrap_or(1)).max(1)
}

fn fallback_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(target_os = "linux")]
fn affinity_cpus() -> usize {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let n = libc::CPU_COUNT(&set);
            if n > 0 {
                return n as usize;
            }
        }
    }
    fallback_cpus()
}

#[cfg(not(target_os = "linux"))]
fn affinity_cpus() -> usize {
    fallback_cpus()
}

#[cfg(unix)]
fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as usize } else { fallback_cpus() }
}

#[cfg(not(unix))]
fn online_cpus() -> usize {
    fallback_cpus()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn check_every_index_once(threads: usize, len: usize, chunk: usize) {
        let pool = ThreadPool::new(threads);
        let hits: Vec<AtomicU32> = (0..len).map(|_| AtomicU32::new(0)).collect();
        for _round in 0..50 {
            pool.parallel_for(len, chunk, |r| {
                for i in r {
                    hits[i].fetch_add(1, Relaxed);
                }
            });
        }
        assert!(
            hits.iter().all(|h| h.load(Relaxed) == 50),
            "threads={threads} len={len} chunk={chunk}"
        );
    }

    #[test]
    fn parallel_for_visits_each_index_once_with_1_to_4_threads() {
        for threads in 1..=4 {
            for (len, chunk) in [(0, 4), (1, 4), (7, 3), (100, 1), (1000, 17)] {
                check_every_index_once(threads, len, chunk);
            }
        }
    }

    #[test]
    fn pool_survives_sleeping_workers_between_jobs() {
        let pool = ThreadPool::new(3);
        let total = AtomicUsize::new(0);
        for _ in 0..5 {
            std::thread::sleep(SPIN * 20);
            pool.run(9, &|i| {
                total.fetch_add(i, Relaxed);
            });
        }
        assert_eq!(total.load(Relaxed), 5 * 36);
    }

    #[test]
    fn nested_run_executes_inline_instead_of_deadlocking() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(3, &|_| {
                total.fetch_add(1, Relaxed);
            })
        });
        assert_eq!(total.load(Relaxed), 12);
    }

    #[test]
    fn concurrent_callers_share_one_pool() {
        let pool = ThreadPool::new(3);
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..100 {
                        pool.parallel_for(64, 8, |r| {
                            total.fetch_add(r.len(), Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Relaxed), 3 * 100 * 64);
    }

    #[test]
    fn task_panic_reaches_the_caller_and_pool_stays_usable() {
        let pool = ThreadPool::new(3);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|i| assert!(i != 5, "task 5 fails"))
        }));
        assert!(result.is_err());
        let total = AtomicUsize::new(0);
        pool.run(8, &|_| {
            total.fetch_add(1, Relaxed);
        });
        assert_eq!(total.load(Relaxed), 8);
    }

    #[test]
    fn thread_count_follows_override_then_mask_then_local_ranks() {
        assert_eq!(threads_for(Some("3"), Some("2"), 1, 8), 3);
        // Pinned (taskset -c 0, or a launcher's mask): the mask already is the share.
        assert_eq!(threads_for(None, Some("2"), 1, 8), 1);
        assert_eq!(threads_for(None, Some("4"), 4, 8), 4);
        // The whole machine: split among the ranks on this host.
        assert_eq!(threads_for(None, Some("2"), 8, 8), 4);
        assert_eq!(threads_for(None, Some("3"), 2, 2), 1);
        assert_eq!(threads_for(None, None, 8, 8), 8);
        assert_eq!(threads_for(Some("0"), Some("x"), 8, 8), 8);
    }

    #[test]
    fn default_threads_is_at_least_one() {
        assert!(default_threads() >= 1);
    }

    #[test]
    fn pool_of_zero_threads_runs_on_the_caller() {
        let pool = ThreadPool::new(0);
        assert_eq!(pool.threads(), 1);
        let total = AtomicUsize::new(0);
        pool.run(5, &|_| {
            total.fetch_add(1, Relaxed);
        });
        assert_eq!(total.load(Relaxed), 5);
    }
}

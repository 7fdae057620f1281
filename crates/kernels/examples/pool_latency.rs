//! Fork-join overhead of huddle-kernels' pool: microseconds per `run` of
//! near-empty tasks, back to back (workers still spinning) and after an
//! idle gap longer than the spin window (workers parked on the condvar).
//!
//! cargo run --release -p huddle-kernels --example pool_latency -- [THREADS]

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use huddle_kernels::ThreadPool;
use huddle_kernels::pool::SPIN;

fn main() -> Result<(), String> {
    let threads = match std::env::args().nth(1) {
        Some(t) => t.parse().map_err(|_| format!("bad thread count {t:?}"))?,
        None => 2,
    };
    let pool = ThreadPool::new(threads);
    let counter = AtomicUsize::new(0);
    let task = |i: usize| {
        counter.fetch_add(black_box(i), Relaxed);
    };
    let tasks = pool.threads() * 4;

    let calls = 20_000;
    let start = Instant::now();
    for _ in 0..calls {
        pool.run(tasks, &task);
    }
    let hot = start.elapsed().as_secs_f64() / calls as f64;

    let gap = SPIN * 10;
    let cold_calls = 200;
    let mut cold = Duration::ZERO;
    for _ in 0..cold_calls {
        std::thread::sleep(gap);
        let start = Instant::now();
        pool.run(tasks, &task);
        cold += start.elapsed();
    }
    println!(
        "threads={} tasks/run={tasks}: back-to-back {:.2} us/run, after {} us idle {:.2} us/run",
        pool.threads(),
        hot * 1e6,
        gap.as_micros(),
        cold.as_secs_f64() / cold_calls as f64 * 1e6
    );
    Ok(())
}

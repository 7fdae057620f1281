//! How many CPU threads candle may use.
//!
//! candle sizes its pools from the physical core count, which ignores
//! `taskset` and ranks sharing a host; several ranks each spinning a
//! full-size pool on the same cores slow everyone down. The budget here
//! starts from the process's affinity mask and splits it between the ranks
//! on this host (`HUDDLE_LOCAL_SIZE`).

use std::sync::OnceLock;

/// Errors from reading the thread budget's inputs.
#[derive(Debug, thiserror::Error)]
pub enum ThreadsError {
    #[error("HUDDLE_LOCAL_SIZE={value:?} is not a positive integer")]
    BadLocalSize { value: String },
    #[error("--threads must be at least 1")]
    ZeroThreads,
}

/// The number of CPUs in this process's affinity mask (what `taskset`
/// allows), or `None` where the mask cannot be read.
pub fn affinity_cpu_count() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set, and
        // sched_getaffinity writes at most size_of::<cpu_set_t>() bytes.
        let count = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return None;
            }
            libc::CPU_COUNT(&set)
        };
        usize::try_from(count).ok().filter(|&n| n > 0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::thread::available_parallelism().ok().map(usize::from)
    }
}

/// Reads `HUDDLE_LOCAL_SIZE` (ranks on this host); 1 when unset.
pub fn local_size_from_env() -> Result<usize, ThreadsError> {
    match std::env::var("HUDDLE_LOCAL_SIZE") {
        Err(_) => Ok(1),
        Ok(value) => match value.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ThreadsError::BadLocalSize { value }),
        },
    }
}

/// The thread count for `cpus` usable CPUs shared by `local_size` ranks,
/// unless the user asked for `requested` threads.
pub fn plan_threads(cpus: usize, local_size: usize, requested: Option<usize>) -> usize {
    match requested {
        Some(n) => n.max(1),
        None => (cpus / local_size.max(1)).max(1),
    }
}

static CONFIGURED: OnceLock<usize> = OnceLock::new();

/// Decides the thread count and makes candle and rayon use it. Returns the
/// count. Later calls return the first call's count and change nothing
/// (rayon's global pool can be built only once).
///
/// # Safety
/// Sets environment variables: no other thread may read or write the
/// environment while this runs. Call it at the start of `main`, before
/// candle or anything else has started threads.
pub unsafe fn configure_cpu_threads(requested: Option<usize>) -> Result<usize, ThreadsError> {
    if let Some(&n) = CONFIGURED.get() {
        return Ok(n);
    }
    if requested == Some(0) {
        return Err(ThreadsError::ZeroThreads);
    }
    let cpus = affinity_cpu_count().unwrap_or(1);
    let threads = plan_threads(cpus, local_size_from_env()?, requested);
    let value = threads.to_string();
    // SAFETY: the caller guarantees no concurrent environment access.
    // candle reads both variables when it sizes its own pools (barrier pool
    // and matmul pool); rayon reads RAYON_NUM_THREADS for its global pool.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", &value);
        std::env::set_var("CANDLE_NUM_THREADS", &value);
    }
    candle_core::utils::init_global_threadpool();
    let _ = CONFIGURED.set(threads);
    tracing::info!(threads, cpus, "cpu threads");
    Ok(threads)
}

/// The count set by [`configure_cpu_threads`], if it ran.
pub fn configured_threads() -> Option<usize> {
    CONFIGURED.get().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_mask_has_at_least_one_cpu() {
        assert!(affinity_cpu_count().is_some_and(|n| n >= 1));
    }

    #[test]
    fn ranks_on_one_host_split_the_cpus() {
        assert_eq!(plan_threads(16, 4, None), 4);
        assert_eq!(plan_threads(16, 3, None), 5);
    }

    #[test]
    fn more_ranks_than_cpus_still_get_one_thread() {
        assert_eq!(plan_threads(2, 8, None), 1);
        assert_eq!(plan_threads(1, 1, None), 1);
    }

    #[test]
    fn explicit_threads_override_the_mask() {
        assert_eq!(plan_threads(2, 2, Some(6)), 6);
    }
}

//! What a split model's communication costs: every collective and
//! send/recv the runtime makes (tensor-parallel all_sums and logit
//! gathers, pipeline activations, engine-loop step messages) is counted,
//! timed and its outgoing bytes tallied on the thread that makes it.
//!
//! Counting per thread keeps ranks apart when tests run several ranks as
//! threads of one process; a model is driven from one thread, so its
//! counts are the thread's since it was loaded.

use std::cell::Cell;
use std::time::Instant;

use huddle_comm::{Algo, Group};

/// Communication of one rank.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommStats {
    /// Collective operations and point-to-point sends and receives.
    pub collectives: u64,
    /// Wall time spent inside them (waiting for peers included).
    pub seconds: f64,
    /// Bytes this rank put on the wire for them: the payload the
    /// algorithm sends (a mesh all_sum sends the whole buffer to each
    /// peer, a ring 2(p-1)/p of it), not counting protocol headers.
    pub bytes_sent: u64,
}

impl std::ops::Add for CommStats {
    type Output = CommStats;
    fn add(self, more: CommStats) -> CommStats {
        CommStats {
            collectives: self.collectives + more.collectives,
            seconds: self.seconds + more.seconds,
            bytes_sent: self.bytes_sent + more.bytes_sent,
        }
    }
}

impl std::ops::Sub for CommStats {
    type Output = CommStats;
    fn sub(self, earlier: CommStats) -> CommStats {
        CommStats {
            collectives: self.collectives.saturating_sub(earlier.collectives),
            seconds: (self.seconds - earlier.seconds).max(0.0),
            bytes_sent: self.bytes_sent.saturating_sub(earlier.bytes_sent),
        }
    }
}

thread_local! {
    static TOTAL: Cell<CommStats> = const { Cell::new(CommStats {
        collectives: 0,
        seconds: 0.0,
        bytes_sent: 0,
    }) };
}

/// Everything counted on this thread so far.
pub fn thread_total() -> CommStats {
    TOTAL.with(Cell::get)
}

/// Runs one communication call `f`, counting it as `bytes_sent`.
pub(crate) fn timed<R>(bytes_sent: u64, f: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let out = f();
    let seconds = start.elapsed().as_secs_f64();
    TOTAL.with(|t| {
        let mut s = t.get();
        s.collectives += 1;
        s.seconds += seconds;
        s.bytes_sent += bytes_sent;
        t.set(s);
    });
    out
}

/// Whether `group` runs a message of `bytes` over its mesh (else its ring),
/// as [`Group`] itself decides.
fn uses_mesh(group: &Group, bytes: u64) -> bool {
    match group.algo() {
        Algo::Auto => bytes <= group.mesh_max_bytes(),
        Algo::Mesh => true,
        _ => false,
    }
}

/// Bytes one rank sends in an all_sum of `bytes` over `group`.
pub(crate) fn all_sum_bytes(group: &Group, bytes: u64) -> u64 {
    let p = group.size() as u64;
    if p <= 1 {
        0
    } else if uses_mesh(group, bytes) {
        (p - 1) * bytes
    } else {
        2 * (p - 1) * bytes / p
    }
}

/// Bytes one rank sends in an all_gather whose blocks add up to `total`,
/// its own block being `mine`.
pub(crate) fn all_gather_bytes(group: &Group, mine: u64, total: u64) -> u64 {
    let p = group.size() as u64;
    if p <= 1 {
        0
    } else if uses_mesh(group, total) {
        (p - 1) * mine
    } else {
        (p - 1) * total / p
    }
}

/// Bytes one rank sends in a broadcast of `bytes` from `root`.
pub(crate) fn broadcast_bytes(group: &Group, bytes: u64, root: usize) -> u64 {
    let p = group.size();
    if p <= 1 {
        0
    } else if uses_mesh(group, bytes) {
        if group.rank() == root {
            (p as u64 - 1) * bytes
        } else {
            0
        }
    } else if group.rank() == (root + p - 1) % p {
        // The ring's last link: this rank only receives.
        0
    } else {
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_calls_add_up_on_their_thread_only() {
        let before = thread_total();
        timed(100, || ());
        timed(20, || ());
        let d = thread_total() - before;
        assert_eq!((d.collectives, d.bytes_sent), (2, 120));
        assert!(d.seconds >= 0.0);
        let other = std::thread::spawn(thread_total).join().unwrap();
        assert_eq!(other, CommStats::default());
    }

    #[test]
    fn one_rank_sends_nothing() {
        let g = Group::single();
        assert_eq!(all_sum_bytes(&g, 4096), 0);
        assert_eq!(all_gather_bytes(&g, 10, 10), 0);
        assert_eq!(broadcast_bytes(&g, 24, 0), 0);
    }
}

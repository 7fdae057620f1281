//! A caller waiting for a transfer through shared memory moves the bytes
//! itself: it writes its queued frames into the outgoing rings and reads
//! the incoming ones (straight into the posted buffers), so a message
//! costs no thread wake-up at all while both sides are in the call.
//!
//! With nothing to move it spins (the peer is usually about to publish):
//! up to 50 ms while its thread has a core to itself
//! (`contention`), briefly and only while spins pay where it shares one.
//! Then it sleeps in `poll` on the rings' eventfds and its own
//! eventfd, which `Shared::notify` signals on any completion or failure
//! (a dead peer is noticed by the I/O thread on its TCP connection and
//! wakes it that way). The sleep is cut into slices as a hang guard.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::engine::Shared;
use crate::error::{CommError, Result};
use crate::io_thread::Sink;
use crate::transport::shm::ShmLink;
use crate::transport::shm::ring;

/// How long a caller spins before it sleeps where its thread shares a
/// core: about a round trip of a small message between two busy cores,
/// far below a scheduler tick.
const SPIN: Duration = Duration::from_micros(30);

/// How long it spins while its thread has a core to itself: longer than
/// the jitter between ranks that compute the same share of a layer (tens
/// to hundreds of microseconds), and longer than a pipeline stage usually
/// waits for the other stages of a small model's token (tens of ms). On
/// a virtual machine a core that went idle can take a millisecond or more
/// to come back: pipeline-parallel decode on the dev VM ran 5-10% slower
/// with a 1 ms spin than with this one. An idle rank (a chat waiting for
/// its user) spins this long once per wait, then sleeps.
const SPIN_ALONE: Duration = Duration::from_millis(50);

/// Spinning pays only while the peer runs at the same time; on a machine
/// with more runnable threads than cores it just takes the core the peer
/// needs. Each thread keeps a score: a spin that ended in data raises it,
/// one that ran out lowers it faster; at zero the thread sleeps at once,
/// trying a spin again every `PROBE` waits.
const SCORE_MAX: u32 = 16;
const MISS_COST: u32 = 4;
const PROBE: u32 = 64;

thread_local! {
    static SCORE: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((SCORE_MAX, 0)) };
}

/// Whether to spin before sleeping this time.
fn should_spin() -> bool {
    SCORE.with(|s| {
        let (score, since) = s.get();
        if score > 0 {
            return true;
        }
        s.set((0, since + 1));
        since + 1 >= PROBE
    })
}

fn spun(hit: bool) {
    SCORE.with(|s| {
        let (score, _) = s.get();
        let score = if hit {
            (score + 1).min(SCORE_MAX)
        } else {
            score.saturating_sub(MISS_COST)
        };
        s.set((score, 0));
    });
}

/// A hang guard only: every event that matters wakes the poll.
const SLICE_MS: libc::c_int = 100;

/// The error for a peer whose ring no correct peer could leave behind.
pub(crate) fn corrupt(shared: &Shared, peer: usize) -> CommError {
    let mut st = shared.lock();
    shared.poison(
        &mut st,
        CommError::PeerLost {
            rank: peer,
            reason: "its shared-memory ring holds impossible positions (memory corrupted)".into(),
        },
    );
    shared.fail(st)
}

/// What the rings looked like after this caller last moved bytes: a
/// change is worth another look, an unchanged ring is not (a header may
/// sit there half-written).
struct Seen {
    readable: Vec<usize>,
    writable: Vec<usize>,
}

impl Seen {
    fn take(links: &[&Arc<ShmLink>]) -> Seen {
        Seen {
            readable: links
                .iter()
                .map(|l| l.rx_ring().readable().unwrap_or(usize::MAX))
                .collect(),
            writable: links
                .iter()
                .map(|l| l.tx_ring().writable().unwrap_or(usize::MAX))
                .collect(),
        }
    }

    fn changed(&self, links: &[&Arc<ShmLink>]) -> bool {
        links.iter().enumerate().any(|(i, l)| {
            l.rx_ring().readable().ok() != Some(self.readable[i])
                || (l.queued() && l.tx_ring().writable().ok() != Some(self.writable[i]))
        })
    }
}

/// Marks this caller as moving the links' bytes; on leaving, hands the
/// I/O thread what no call will wait for (frames a call waits for are
/// moved by its next wait, or by the I/O thread once it sleeps elsewhere:
/// `Shared::sleep`).
struct Pushing<'a> {
    shared: &'a Shared,
    links: &'a [&'a Arc<ShmLink>],
}

impl<'a> Pushing<'a> {
    fn new(shared: &'a Shared, links: &'a [&'a Arc<ShmLink>]) -> Self {
        for l in links {
            l.pushers.fetch_add(1, Ordering::AcqRel);
        }
        Pushing { shared, links }
    }
}

impl Drop for Pushing<'_> {
    fn drop(&mut self) {
        let mut left = false;
        for l in self.links {
            l.pushers.fetch_sub(1, Ordering::AcqRel);
            left |= l.loose();
        }
        if left {
            self.shared.wake_io();
        }
    }
}

/// Blocks until `ticket` completes or the engine fails.
pub(crate) fn wait(shared: &Shared, ticket: u64) -> Result<()> {
    let links: Vec<&Arc<ShmLink>> = shared.shm.iter().flatten().collect();
    let _pushing = Pushing::new(shared, &links);
    let wake = crate::progress::wake_fd();
    let mut done = Vec::new();
    loop {
        let events = shared.events.load(Ordering::Acquire);
        {
            let mut st = shared.lock();
            if st.completed.remove(&ticket) {
                return Ok(());
            }
            // A peer that closed its group reads nothing more: a send
            // waiting for room in its ring fails as it would over TCP.
            if let Some(l) = links.iter().find(|l| st.gone[l.peer] && l.awaited()) {
                let err = CommError::PeerLost {
                    rank: l.peer,
                    reason: "it closed its group before receiving data sent to it".into(),
                };
                shared.poison(&mut st, err);
            }
            if st.error.is_some() {
                return Err(shared.fail(st));
            }
        }
        let mut moved = false;
        for l in &links {
            if l.queued() {
                moved |= l.try_push(&mut done).map_err(|_| corrupt(shared, l.peer))?;
            }
            let mut sink = Sink::new(shared, &mut done);
            moved |= l
                .try_drain(&mut sink)
                .map_err(|_| corrupt(shared, l.peer))?;
        }
        shared.publish(&mut done, wake);
        if moved {
            continue;
        }
        let seen = Seen::take(&links);
        let alone = !crate::contention::core_shared();
        let stirred = (alone || should_spin()) && {
            let until = Instant::now() + if alone { SPIN_ALONE } else { SPIN };
            let mut spins = 0u32;
            let hit = loop {
                if shared.events.load(Ordering::Acquire) != events || seen.changed(&links) {
                    break true;
                }
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(64) && Instant::now() >= until {
                    break false;
                }
                std::hint::spin_loop();
            };
            if !alone {
                spun(hit);
            }
            hit
        };
        if !stirred {
            sleep(shared, &links, &seen, ticket, wake);
        }
    }
}

/// Sleeps until a ring changes, something is published, or a slice ends.
fn sleep(shared: &Shared, links: &[&Arc<ShmLink>], seen: &Seen, ticket: u64, wake: i32) {
    {
        let mut st = shared.lock();
        if st.completed.contains(&ticket) || st.error.is_some() {
            return;
        }
        if wake >= 0 {
            st.pollers.push(wake);
        }
    }
    let mut fds = Vec::with_capacity(2 * links.len() + 1);
    let mut space = Vec::with_capacity(links.len());
    for l in links {
        l.rx_ring().wait_data(true);
        fds.push(libc::pollfd {
            fd: l.rx_ring().data_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let q = l.queued();
        if q {
            l.tx_ring().wait_space(true);
            fds.push(libc::pollfd {
                fd: l.tx_ring().space_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        space.push(q);
    }
    if wake >= 0 {
        fds.push(libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    // Counted as a sleeper first, then one more look: a peer that
    // published before it saw the count is seen here.
    if !seen.changed(links) {
        let ms = if wake >= 0 { SLICE_MS } else { 10 };
        // SAFETY: valid pollfds over descriptors this process holds open.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n > 0 {
            for f in fds.iter().filter(|f| f.revents != 0) {
                ring::clear(f.fd);
            }
        }
    }
    for (l, &q) in links.iter().zip(&space) {
        l.rx_ring().wait_data(false);
        if q {
            l.tx_ring().wait_space(false);
        }
    }
    if wake >= 0 {
        let mut st = shared.lock();
        if let Some(i) = st.pollers.iter().position(|&fd| fd == wake) {
            st.pollers.swap_remove(i);
        }
    }
}

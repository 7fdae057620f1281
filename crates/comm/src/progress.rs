//! A caller blocked on small receives reads its peers' sockets itself:
//! the message then costs one wake-up (this thread's, by the kernel) rather
//! than two (the I/O thread's, then this thread's through the condvar).
//!
//! The caller sleeps in `poll` on the peers' first connections (where
//! small frames travel) and on its own eventfd, which whoever publishes a
//! completion or a failure signals (`Shared::notify`). Everything else,
//! heartbeats, large writes, failures, stays with the I/O thread.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use crate::engine::{Shared, State};
use crate::io_thread::Sink;
use crate::transport::inbound::Inbound;

/// Receives up to this size are worth reading on the caller's thread;
/// larger ones are bandwidth-bound and stay with the I/O thread.
pub(crate) const CALLER_READ_MAX: usize = 64 * 1024;

/// A hang guard only: every event that matters wakes the poll.
const POLL_GUARD_MS: libc::c_int = 1000;

thread_local! {
    static WAKE: Option<OwnedFd> = {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        // SAFETY: a fresh descriptor that nothing else owns.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    };
}

/// This thread's eventfd (-1 when it could not be made), which
/// `Shared::notify` signals while it is in `State::pollers`.
pub(crate) fn wake_fd() -> RawFd {
    WAKE.with(|w| w.as_ref().map_or(-1, |f| f.as_raw_fd()))
}

/// Wakes a caller sleeping in [`Reader::step`].
pub(crate) fn signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: `fd` is a registered poller's eventfd, open while registered.
    // A full counter (never in practice) still leaves it readable.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// The connections one call's caller reads, held from the first small
/// receive it posts (so a reply that comes back fast does not wake the I/O
/// thread) until the call ends.
pub(crate) struct Reader<'s> {
    shared: &'s Shared,
    /// (source, its first connection) taken over from the I/O thread.
    conns: Vec<(usize, Arc<Inbound>)>,
    wake: RawFd,
}

impl<'s> Reader<'s> {
    pub fn new(shared: &'s Shared) -> Reader<'s> {
        Reader {
            shared,
            conns: Vec::new(),
            wake: wake_fd(),
        }
    }

    /// Takes over reading `src`'s first connection (once per source).
    /// Call without the state lock.
    pub fn hold(&mut self, src: usize) {
        if self.wake < 0 || self.conns.iter().any(|(s, _)| *s == src) {
            return;
        }
        let Some(c) = self
            .shared
            .inbound
            .get()
            .and_then(|t| t.get(src).cloned().flatten())
        else {
            return;
        };
        if c.acquire() {
            self.conns.push((src, c));
        }
    }

    /// Whether `step` can make progress on receives from `src`.
    pub fn holds(&self, src: usize) -> bool {
        self.conns.iter().any(|(s, _)| *s == src)
    }

    /// Lets go of every connection (the I/O thread re-arms them later).
    pub fn release(&mut self) {
        for (_, c) in self.conns.drain(..) {
            c.release();
        }
    }

    /// Sleeps until a held connection has bytes, reads them, and repeats
    /// until receive `ticket` completes; returns early when another thread
    /// published something (the caller looks at the state again). Called
    /// with the state checked (`ticket` not done yet); returns it locked.
    pub fn step(&mut self, mut st: MutexGuard<'s, State>, ticket: u64) -> MutexGuard<'s, State> {
        st.pollers.push(self.wake);
        drop(st);
        // `poll` first, not a read: it returns at once for bytes already
        // there, and names the connections worth a read.
        let mut ready = vec![false; self.conns.len()];
        while self.sleep(&mut ready) && !self.read(&ready, ticket) {}
        let mut st = self.shared.lock();
        if let Some(i) = st.pollers.iter().position(|&fd| fd == self.wake) {
            st.pollers.swap_remove(i);
        }
        st
    }

    /// One pass over the `ready` connections; true when it completed
    /// `ticket`.
    fn read(&self, ready: &[bool], ticket: u64) -> bool {
        let mut done = Vec::new();
        let mut ended = false;
        for ((_, c), _) in self.conns.iter().zip(ready).filter(|(_, r)| **r) {
            if c.ended.load(Ordering::Acquire) {
                continue;
            }
            let mut rs = c.lock();
            if rs.ended.is_some() {
                continue;
            }
            let mut sink = Sink::new(self.shared, &mut done);
            let r = rs.read_ready(c.fd(), c.peer, &mut sink, false);
            if sink.bye {
                rs.bye_seen = true;
            }
            let outcome = match r {
                Ok(pass) => {
                    if pass.got_bytes {
                        c.got_bytes.store(true, Ordering::Relaxed);
                    }
                    pass.eof.then_some(None)
                }
                Err(e) => Some(Some(e)),
            };
            if let Some(o) = outcome {
                // The I/O thread owns closing and reporting a lost peer.
                rs.ended = Some(o);
                c.ended.store(true, Ordering::Release);
                ended = true;
            }
        }
        if ended {
            self.shared.wake_io();
        }
        if done.is_empty() {
            return false;
        }
        let mine = done.contains(&ticket);
        let mut st = self.shared.lock();
        st.completed.extend(done);
        // This thread is awake already: wake only the others.
        for &fd in st.pollers.iter().filter(|&&fd| fd != self.wake) {
            signal(fd);
        }
        self.shared.notify_sleepers(&st);
        mine
    }

    /// Sleeps until a connection or the eventfd is readable, and marks the
    /// readable connections in `ready`. False when the state may have
    /// changed (the eventfd fired, a signal, the guard timeout), so the
    /// caller must look at it again.
    fn sleep(&self, ready: &mut [bool]) -> bool {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(self.conns.len() + 1);
        let mut index = Vec::with_capacity(self.conns.len());
        for (i, (_, c)) in self.conns.iter().enumerate() {
            if !c.ended.load(Ordering::Acquire) {
                fds.push(libc::pollfd {
                    fd: c.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                index.push(i);
            }
        }
        fds.push(libc::pollfd {
            fd: self.wake,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: valid pollfds, all descriptors open (owned by `Inbound`s
        // this reader holds, and by this thread).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_GUARD_MS) };
        if n <= 0 {
            return false;
        }
        ready.iter_mut().for_each(|r| *r = false);
        for (p, &i) in fds.iter().zip(&index) {
            ready[i] = p.revents != 0;
        }
        if fds.last().is_some_and(|p| p.revents != 0) {
            let mut v = 0u64;
            // SAFETY: reading the 8-byte counter of our own eventfd.
            unsafe { libc::read(self.wake, (&mut v as *mut u64).cast(), 8) };
            return false;
        }
        true
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

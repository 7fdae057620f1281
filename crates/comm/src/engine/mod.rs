//! The meeting point of callers and the I/O thread: posted receives,
//! messages that arrived before anyone asked for them, queued sends,
//! completions, and the failure state.
//!
//! Algorithms talk to it through [`Op`], one per call: `send`, `recv` and
//! `wait`, keyed by (group, sequence number, tag). An `Op` never returns
//! while the I/O thread may still touch the caller's memory, even on error.
//! Any failure poisons the engine: every pending and later call reports it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use crate::bootstrap::Tuning;
use crate::dtype::Fold;
use crate::error::{CommError, Result};
use crate::progress::{CALLER_READ_MAX, Reader};
use crate::transport::inbound::Inbound;
use crate::transport::shm::ShmLink;
use crate::transport::{OutFrame, Payload, RawMut};
use crate::wire::{FrameKind, Header, Key, OpDesc};

mod shm;

/// Sends up to this size are copied at once, so the caller never waits for
/// them (and two ranks sending to each other never block each other).
const INLINE_SEND_MAX: usize = 64 * 1024;

pub(crate) struct Posted {
    pub mem: RawMut,
    pub ticket: u64,
    /// Fold the payload into `mem` rather than copy it.
    pub fold: Option<Fold>,
}

pub(crate) struct State {
    next_ticket: u64,
    pub outbox: Vec<OutFrame>,
    pub posted: HashMap<(usize, Key), Posted>,
    pub unexpected: HashMap<(usize, Key), (OpDesc, Vec<u8>)>,
    pub completed: HashSet<u64>,
    /// What this rank is doing in (src, group, seq): incoming frames must agree.
    pub expect: HashMap<(usize, u64, u64), OpDesc>,
    /// What a peer announced for (src, group, seq) before this rank got there.
    pub early: HashMap<(usize, u64, u64), OpDesc>,
    pub error: Option<CommError>,
    /// The I/O thread has dropped every pointer into caller memory.
    pub purged: bool,
    pub shutdown: bool,
    /// Peers that closed their group cleanly.
    pub gone: Vec<bool>,
    /// Socket of each peer's first connection (-1: none).
    pub direct_fd: Vec<std::os::fd::RawFd>,
    /// A caller may write to `direct_fd[p]` itself: the I/O thread has
    /// nothing queued on it and will not write to it until it clears this
    /// flag (under the lock). Saves waking the I/O thread for small frames.
    pub idle: Vec<bool>,
    /// Eventfds of callers sleeping in `progress::Reader::step`.
    pub pollers: Vec<std::os::fd::RawFd>,
    /// Callers sleeping on the condvar: a notify with none costs a syscall.
    sleepers: usize,
}

pub(crate) struct Shared {
    pub state: Mutex<State>,
    /// Set (after the change, under the lock) whenever the outbox or the
    /// shutdown flag changed, so the I/O thread locks only when needed.
    pub submitted: AtomicBool,
    /// Mirrors `State::error.is_some()` for the I/O thread's loop.
    pub failed: AtomicBool,
    pub cond: Condvar,
    pub waker: mio::Waker,
    pub me: usize,
    /// Each peer's first connection (where small frames travel), for
    /// callers that read it themselves; set once by the I/O thread.
    pub inbound: OnceLock<Vec<Option<Arc<Inbound>>>>,
    /// Keeps the poller open as long as `inbound` may change registrations.
    pub registry: OnceLock<mio::Registry>,
    /// Each same-host peer's shared-memory link (None: TCP).
    pub shm: Vec<Option<Arc<ShmLink>>>,
    /// Bumped by every `notify`, so a spinning caller sees that something
    /// was published without taking the lock.
    pub events: AtomicU64,
}

impl Shared {
    pub fn new(waker: mio::Waker, me: usize, world: usize, shm: Vec<Option<Arc<ShmLink>>>) -> Self {
        Shared {
            state: Mutex::new(State {
                next_ticket: 1,
                outbox: Vec::new(),
                posted: HashMap::new(),
                unexpected: HashMap::new(),
                completed: HashSet::new(),
                expect: HashMap::new(),
                early: HashMap::new(),
                error: None,
                purged: false,
                shutdown: false,
                gone: vec![false; world],
                direct_fd: vec![-1; world],
                idle: vec![false; world],
                pollers: Vec::new(),
                sleepers: 0,
            }),
            cond: Condvar::new(),
            submitted: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            waker,
            me,
            inbound: OnceLock::new(),
            registry: OnceLock::new(),
            shm,
            events: AtomicU64::new(0),
        }
    }

    /// The shared-memory link to `peer`, if it has one.
    pub fn link(&self, peer: usize) -> Option<&Arc<ShmLink>> {
        self.shm.get(peer).and_then(Option::as_ref)
    }

    /// A poisoned mutex means a thread panicked while holding it; the state
    /// is still consistent enough to report errors, so keep going.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every caller waiting for a completion or a failure (call with
    /// the state locked, after changing it).
    pub fn notify(&self, st: &State) {
        self.events.fetch_add(1, Ordering::Release);
        for &fd in &st.pollers {
            crate::progress::signal(fd);
        }
        self.notify_sleepers(st);
    }

    /// Wakes the callers sleeping on the condvar, if any.
    pub fn notify_sleepers(&self, st: &State) {
        if st.sleepers > 0 {
            self.cond.notify_all();
        }
    }

    /// Sleeps on the condvar until a `notify`.
    pub fn sleep<'g>(&self, mut st: MutexGuard<'g, State>) -> MutexGuard<'g, State> {
        // Whatever this caller waits for may come on a connection that
        // callers let go of: the I/O thread must read it now, not later.
        self.rearm_idle();
        st.sleepers += 1;
        let mut st = self.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        st.sleepers -= 1;
        st
    }

    /// Gives the I/O thread back every first connection no caller holds.
    /// A failure is left to the I/O thread's own attempt, which reports it.
    pub fn rearm_idle(&self) {
        for c in self.inbound.get().into_iter().flatten().flatten() {
            let _ = c.rearm_if_idle(std::time::Duration::ZERO);
        }
        let mut rearmed = false;
        for l in self.shm.iter().flatten() {
            rearmed |= !l.io_reads() && !l.rearm_if_idle(std::time::Duration::ZERO);
        }
        // Bytes that came while callers held a ring woke nobody, and
        // frames queued for a ring wait for someone to move them.
        if rearmed || self.shm.iter().flatten().any(|l| l.queued()) {
            self.wake_io();
        }
    }

    pub fn wake_io(&self) {
        // Failing to wake leaves the I/O thread on its next timer tick.
        let _ = self.waker.wake();
    }

    /// Records the first failure and lets the I/O thread purge.
    /// Makes completions found by a caller visible, waking every other
    /// waiter (`own` is the caller's eventfd: it is awake already).
    pub fn publish(&self, done: &mut Vec<u64>, own: std::os::fd::RawFd) {
        if done.is_empty() {
            return;
        }
        let mut st = self.lock();
        st.completed.extend(done.drain(..));
        self.events.fetch_add(1, Ordering::Release);
        for &fd in st.pollers.iter().filter(|&&fd| fd != own) {
            crate::progress::signal(fd);
        }
        self.notify_sleepers(&st);
    }

    pub fn poison(&self, st: &mut State, err: CommError) {
        if st.error.is_none() {
            tracing::debug!("rank {}: {err}", self.me);
            st.error = Some(err);
            self.failed.store(true, Ordering::Release);
        }
        self.notify(st);
    }

    /// Waits until the I/O thread no longer references caller memory, and
    /// returns the failure.
    pub fn fail(&self, mut st: MutexGuard<'_, State>) -> CommError {
        self.wake_io();
        while !st.purged {
            st = self.sleep(st);
        }
        st.error.clone().unwrap_or(CommError::Shutdown)
    }
}

/// A completion to wait for; 0 means done already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

/// A running engine: the shared state and its I/O thread.
pub(crate) struct Engine {
    pub shared: Arc<Shared>,
    pub tuning: Tuning,
    io: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    pub fn new(shared: Arc<Shared>, tuning: Tuning, io: JoinHandle<()>) -> Self {
        Engine {
            shared,
            tuning,
            io: Mutex::new(Some(io)),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.shutdown = true;
            self.shared.submitted.store(true, Ordering::Release);
        }
        self.shared.wake_io();
        let handle = self.io.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// One collective or point-to-point call in flight.
pub(crate) struct Op<'e> {
    shared: &'e Shared,
    group: u64,
    seq: u64,
    desc: OpDesc,
    srcs: Vec<usize>,
    outstanding: Vec<u64>,
    /// Posted receives small enough for the caller to read itself.
    small_recvs: Vec<(u64, usize)>,
    reader: Reader<'e>,
    /// Tickets that travel through shared memory: the caller moves the
    /// bytes itself while it waits for them.
    shm_tickets: Vec<u64>,
    /// Same-host peers this call receives from.
    shm_srcs: Vec<usize>,
    /// This call reads their incoming rings (taken from the I/O thread
    /// while it waits on them, until it ends or sleeps elsewhere).
    shm_holding: bool,
}

impl<'e> Op<'e> {
    /// Starts a call that will receive from `srcs` (world ranks), checking
    /// what those peers already announced for the same (group, seq).
    pub fn begin(
        engine: &'e Engine,
        group: u64,
        seq: u64,
        desc: OpDesc,
        srcs: Vec<usize>,
    ) -> Result<Op<'e>> {
        let shared = &*engine.shared;
        let mut st = shared.lock();
        if st.error.is_some() {
            return Err(shared.fail(st));
        }
        for &src in &srcs {
            st.expect.insert((src, group, seq), desc);
            if let Some(theirs) = st.early.remove(&(src, group, seq))
                && theirs != desc
            {
                let err = mismatch(group, shared.me, &desc, src, &theirs);
                shared.poison(&mut st, err);
            }
        }
        if st.error.is_some() {
            return Err(shared.fail(st));
        }
        Ok(Op {
            shared,
            group,
            seq,
            desc,
            srcs,
            outstanding: Vec::new(),
            small_recvs: Vec::new(),
            reader: Reader::new(shared),
            shm_tickets: Vec::new(),
            shm_srcs: Vec::new(),
            shm_holding: false,
        })
    }

    fn key(&self, tag: u64) -> Key {
        Key {
            group: self.group,
            seq: self.seq,
            tag,
        }
    }

    /// Posts a receive of exactly `dst.len()` bytes from `src`.
    ///
    /// # Safety
    /// `dst` must stay alive and untouched until the returned ticket is
    /// waited for or this `Op` is dropped (both block until the I/O thread
    /// is done with it).
    pub unsafe fn recv(&mut self, src: usize, tag: u64, dst: &mut [u8]) -> Result<Ticket> {
        // SAFETY: forwarded.
        unsafe { self.post(src, tag, dst, None) }
    }

    /// Whether receives from `src` can fold as they arrive
    /// ([`Op::recv_fold`]): a peer on this host.
    pub fn folds_from(&self, src: usize) -> bool {
        self.shared.link(src).is_some()
    }

    /// Posts a receive whose payload is folded into `dst` (dst = op(payload,
    /// dst) per element) instead of copied. Only for `folds_from(src)`.
    ///
    /// # Safety
    /// As for [`Op::recv`]; `dst` is aligned for the fold's element type.
    pub unsafe fn recv_fold(
        &mut self,
        src: usize,
        tag: u64,
        dst: &mut [u8],
        fold: Fold,
    ) -> Result<Ticket> {
        // SAFETY: forwarded.
        unsafe { self.post(src, tag, dst, Some(fold)) }
    }

    unsafe fn post(
        &mut self,
        src: usize,
        tag: u64,
        dst: &mut [u8],
        fold: Option<Fold>,
    ) -> Result<Ticket> {
        let key = self.key(tag);
        let mut st = self.shared.lock();
        if st.error.is_some() {
            return Err(self.shared.fail(st));
        }
        if let Some((theirs, data)) = st.unexpected.remove(&(src, key)) {
            drop(st);
            if theirs != self.desc || data.len() != dst.len() {
                let mut st = self.shared.lock();
                let err = mismatch(self.group, self.shared.me, &self.desc, src, &theirs);
                self.shared.poison(&mut st, err);
                return Err(self.shared.fail(st));
            }
            let p = Posted {
                mem: RawMut {
                    ptr: dst.as_mut_ptr(),
                    len: dst.len(),
                },
                ticket: 0,
                fold,
            };
            // SAFETY: `dst` is exactly `data.len()` bytes, ours.
            unsafe { crate::io_thread::land(&p, &data) };
            return Ok(Ticket(0));
        }
        if st.gone[src] {
            let err = CommError::PeerLost {
                rank: src,
                reason: format!(
                    "it closed its group before sending the data of {} that this rank waits for",
                    self.desc
                ),
            };
            self.shared.poison(&mut st, err);
            return Err(self.shared.fail(st));
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.posted.insert(
            (src, key),
            Posted {
                mem: RawMut {
                    ptr: dst.as_mut_ptr(),
                    len: dst.len(),
                },
                ticket,
                fold,
            },
        );
        self.outstanding.push(ticket);
        drop(st);
        if self.shared.link(src).is_some() {
            self.shm_tickets.push(ticket);
            if !self.shm_srcs.contains(&src) {
                self.shm_srcs.push(src);
                if self.shm_holding
                    && let Some(l) = self.shared.link(src)
                {
                    l.hold();
                }
            }
        } else if dst.len() <= CALLER_READ_MAX {
            self.small_recvs.push((ticket, src));
            self.reader.hold(src);
        }
        Ok(Ticket(ticket))
    }

    /// Queues `data` for `peer`. Small payloads are done at once: written
    /// to the socket by this thread when the I/O thread has nothing queued
    /// for the peer, copied otherwise. Large ones are written from `data`.
    ///
    /// # Safety
    /// As for [`Op::recv`]: `data` must stay alive and unmodified until the
    /// ticket is waited for or this `Op` is dropped.
    pub unsafe fn send(&mut self, peer: usize, tag: u64, data: &[u8]) -> Result<Ticket> {
        let header = Header {
            kind: FrameKind::Data,
            desc: self.desc,
            key: self.key(tag),
            len: data.len() as u64,
        }
        .encode();
        let inline = data.len() <= INLINE_SEND_MAX;
        if let Some(link) = self.shared.link(peer) {
            // SAFETY: forwarded from this function's contract.
            return unsafe { self.send_shm(link, peer, header, data, inline) };
        }
        let mut st = self.shared.lock();
        if st.error.is_some() {
            return Err(self.shared.fail(st));
        }
        let ticket = if inline {
            None
        } else {
            let t = st.next_ticket;
            st.next_ticket += 1;
            self.outstanding.push(t);
            Some(t)
        };
        let mut written = None;
        if inline && st.idle[peer] && !st.outbox.iter().any(|f| f.peer == peer) {
            let n = crate::transport::tcp::write_direct(st.direct_fd[peer], &header, data);
            if n == header.len() + data.len() {
                return Ok(Ticket(0));
            }
            if n > 0 {
                st.idle[peer] = false;
                written = Some(n);
            }
        }
        // Copied only when the socket did not take it all at once.
        let payload = Payload::of(data, inline);
        let was_empty = st.outbox.is_empty();
        st.outbox.push(OutFrame {
            peer,
            header,
            payload,
            ticket,
            written,
        });
        self.shared.submitted.store(true, Ordering::Release);
        drop(st);
        if was_empty {
            self.shared.wake_io();
        }
        Ok(Ticket(ticket.unwrap_or(0)))
    }

    /// Blocks until `t` completes or the engine fails. Waiting for a small
    /// receive, the caller reads the sockets itself (`progress`); waiting
    /// for a transfer through shared memory, it moves the bytes itself.
    pub fn wait(&mut self, t: Ticket) -> Result<()> {
        if t.0 == 0 {
            return Ok(());
        }
        if self.shm_tickets.contains(&t.0) {
            return self.wait_shm(t);
        }
        self.release_shm();
        let read_myself = self
            .small_recvs
            .iter()
            .any(|&(x, src)| x == t.0 && self.reader.holds(src));
        if !read_myself {
            // Nobody would read the held connections while this thread
            // sleeps on the condvar (two ranks doing so, each waiting for
            // its large send to drain, would wait for each other forever).
            self.reader.release();
        }
        let mut st = self.shared.lock();
        loop {
            if st.completed.remove(&t.0) {
                if let Some(i) = self.outstanding.iter().rposition(|x| *x == t.0) {
                    self.outstanding.swap_remove(i);
                }
                self.small_recvs.retain(|(x, _)| *x != t.0);
                return Ok(());
            }
            if st.error.is_some() {
                return Err(self.shared.fail(st));
            }
            st = if read_myself {
                self.reader.step(st, t.0)
            } else {
                self.shared.sleep(st)
            };
        }
    }

    /// Waits for everything still outstanding (typically the sends).
    pub fn finish(mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.outstanding);
        for t in pending {
            self.wait(Ticket(t))?;
        }
        Ok(())
    }
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        self.reader.release();
        self.release_shm();
        let mut st = self.shared.lock();
        if st.sleepers > 0 {
            self.shared.rearm_idle();
        }
        for &src in &self.srcs {
            st.expect.remove(&(src, self.group, self.seq));
        }
        // Never give memory back while the I/O thread may still use it.
        while !self.outstanding.is_empty() {
            self.outstanding.retain(|t| !st.completed.remove(t));
            if self.outstanding.is_empty() {
                break;
            }
            if st.error.is_some() {
                let _ = self.shared.fail(st);
                return;
            }
            st = self.shared.sleep(st);
        }
    }
}

pub(crate) fn mismatch(
    group: u64,
    me: usize,
    mine: &OpDesc,
    them: usize,
    theirs: &OpDesc,
) -> CommError {
    CommError::Mismatch {
        group,
        local: me,
        local_op: mine.to_string(),
        remote: them,
        remote_op: theirs.to_string(),
    }
}

/// The payload of an Abort frame: who is to blame and why, so every rank
/// reports the root cause rather than "rank 1 went away".
pub(crate) fn encode_abort(err: &CommError, me: usize) -> Option<Vec<u8>> {
    let mut e = crate::codec::Encoder::default();
    match err {
        CommError::PeerLost { rank, reason } => {
            e.u8(1).u64(*rank as u64).str(reason);
        }
        CommError::Aborted { .. } | CommError::Shutdown => return None,
        other => {
            e.u8(2).u64(me as u64).str(&other.to_string());
        }
    }
    Some(e.0)
}

pub(crate) fn decode_abort(payload: &[u8], from: usize) -> CommError {
    let mut d = crate::codec::Decoder::new(payload);
    match (d.u8(), d.u64(), d.str()) {
        (Some(1), Some(rank), Some(reason)) => CommError::PeerLost {
            rank: rank as usize,
            reason: format!("{reason} (reported by rank {from})"),
        },
        (_, _, reason) => CommError::Aborted {
            rank: from,
            reason: reason.unwrap_or_else(|| "no reason given".into()),
        },
    }
}

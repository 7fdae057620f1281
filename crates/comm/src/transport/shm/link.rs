//! One peer's shared-memory link: the frames this rank writes into its
//! outgoing ring and reads from its incoming one, the same frames (header
//! and payload) TCP carries, so matching and checks are unchanged.
//!
//! Either side may be driven by any thread of this process, one at a
//! time (a mutex per direction): a caller writes a frame itself when its
//! queue is empty and it fits, and a caller waiting for data reads the
//! ring itself; the I/O thread does both otherwise. While callers hold
//! the incoming ring ([`ShmLink::hold`]) the I/O thread is not woken for
//! it; it takes it back a while after the last one lets go.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::ring::{Corrupt, Ring};
use super::segment::Mapping;
use crate::transport::inbound::dest_slice;
use crate::transport::{Dest, FrameSink, OutFrame};
use crate::wire::{HEADER_LEN, Header};

/// Bytes copied between two publications (or two releases of room), so
/// the other side starts on a large frame while this one still copies.
const STEP: usize = 256 * 1024;

/// Calls moving at least this much (all ranks' data) write what they
/// receive with non-temporal stores: the result outgrows the caches.
const STREAM_MIN: usize = 32 << 20;

/// Whole frames up to this size that wrap around the ring's end are
/// copied out in one piece; larger ones are read step by step.
const SCRATCH_MAX: usize = 64 * 1024;

/// Whether a frame belongs to a call whose results stream past the caches
/// (`STREAM_MIN`): such frames are always read step by step, since a whole
/// frame handed over at once lands with plain stores.
fn streams(h: &Header) -> bool {
    (h.desc.count as usize).saturating_mul(h.desc.dtype.size()) >= STREAM_MIN
}

struct Incoming {
    header: Header,
    dest: Dest,
    got: usize,
}

pub(crate) struct TxState {
    pub queue: VecDeque<OutFrame>,
    /// Bytes of the front frame (header included) already in the ring.
    whead: usize,
    /// After a failure nothing more is written.
    broken: bool,
}

struct RxState {
    incoming: Option<Incoming>,
    scratch: Vec<u8>,
}

struct Interest {
    callers: usize,
    /// The I/O thread counts as a sleeping consumer of the ring, and its
    /// poller watches the ring's data eventfd (which also wakes callers:
    /// while they hold the ring, the poller must not be woken by it).
    io_armed: bool,
    released_at: Instant,
    /// (epoll descriptor, token) of the I/O thread's registration.
    watch: Option<(RawFd, u64)>,
}

/// Changes (or adds) an edge-triggered registration of `fd`, reading or
/// not. Failure leaves the I/O thread woken needlessly, which is harmless.
pub(crate) fn epoll_set(
    epoll: RawFd,
    fd: RawFd,
    token: u64,
    on: bool,
    add: bool,
) -> std::io::Result<()> {
    let mut events = libc::EPOLLET as u32;
    if on {
        events |= libc::EPOLLIN as u32;
    }
    let mut ev = libc::epoll_event { events, u64: token };
    let op = if add {
        libc::EPOLL_CTL_ADD
    } else {
        libc::EPOLL_CTL_MOD
    };
    // SAFETY: valid epoll and eventfd descriptors (the engine keeps the
    // poller open as long as the links), a valid event.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut ev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) struct ShmLink {
    pub peer: usize,
    tx_ring: Ring,
    rx_ring: Ring,
    tx: Mutex<TxState>,
    rx: Mutex<RxState>,
    interest: Mutex<Interest>,
    /// Frames in the send queue, readable without the lock.
    queued: AtomicUsize,
    /// Of those, frames nobody waits for (small sends, done for their
    /// caller already): someone must move them even after every call ends.
    loose: AtomicUsize,
    /// Callers moving this link's bytes themselves right now: the I/O
    /// thread then leaves the send queue to them.
    pub pushers: AtomicUsize,
    // Last: the rings point into it.
    _map: Mapping,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

impl ShmLink {
    pub fn new(peer: usize, map: Mapping, tx_ring: Ring, rx_ring: Ring) -> ShmLink {
        // The I/O thread starts out responsible for the incoming ring.
        rx_ring.wait_data(true);
        ShmLink {
            peer,
            tx_ring,
            rx_ring,
            tx: Mutex::new(TxState {
                queue: VecDeque::new(),
                whead: 0,
                broken: false,
            }),
            rx: Mutex::new(RxState {
                incoming: None,
                scratch: Vec::new(),
            }),
            interest: Mutex::new(Interest {
                callers: 0,
                io_armed: true,
                released_at: Instant::now(),
                watch: None,
            }),
            queued: AtomicUsize::new(0),
            loose: AtomicUsize::new(0),
            pushers: AtomicUsize::new(0),
            _map: map,
        }
    }

    pub fn tx_ring(&self) -> &Ring {
        &self.tx_ring
    }

    pub fn rx_ring(&self) -> &Ring {
        &self.rx_ring
    }

    pub fn tx(&self) -> MutexGuard<'_, TxState> {
        lock(&self.tx)
    }

    /// Writes a whole frame now if nothing is queued before it and the
    /// ring has room; false leaves it to the caller to queue.
    pub fn send_now(&self, header: &[u8], payload: &[u8]) -> Result<bool, Corrupt> {
        let tx = self.tx();
        if tx.broken || !tx.queue.is_empty() {
            return Ok(false);
        }
        let total = header.len() + payload.len();
        if self.tx_ring.writable()? < total {
            return Ok(false);
        }
        self.tx_ring.put(0, header);
        self.tx_ring.put(header.len(), payload);
        self.tx_ring.publish(total);
        Ok(true)
    }

    /// Queues a frame behind the others; true when the queue was empty.
    pub fn enqueue(&self, f: OutFrame) -> bool {
        let mut tx = self.tx();
        if tx.broken {
            return false;
        }
        if f.ticket.is_none() {
            self.loose.fetch_add(1, Ordering::AcqRel);
        }
        tx.queue.push_back(f);
        self.queued.store(tx.queue.len(), Ordering::Release);
        tx.queue.len() == 1
    }

    /// Moves queued frames into the ring while it has room; tickets of
    /// frames written whole go to `done`. True when bytes moved.
    pub fn push(&self, done: &mut Vec<u64>) -> Result<bool, Corrupt> {
        let mut tx = self.tx();
        self.push_locked(&mut tx, done)
    }

    /// As [`ShmLink::push`], unless another thread is at it already.
    pub fn try_push(&self, done: &mut Vec<u64>) -> Result<bool, Corrupt> {
        match try_lock(&self.tx) {
            Some(mut tx) => self.push_locked(&mut tx, done),
            None => Ok(false),
        }
    }

    fn push_locked(&self, tx: &mut TxState, done: &mut Vec<u64>) -> Result<bool, Corrupt> {
        let mut moved = false;
        while let Some(f) = tx.queue.front() {
            let room = self.tx_ring.writable()?.min(STEP);
            if room == 0 {
                break;
            }
            let payload = f.payload.bytes();
            let total = HEADER_LEN + payload.len();
            let mut at = tx.whead;
            let end = (at + room).min(total);
            let mut off = 0;
            if at < HEADER_LEN {
                let h = &f.header[at..end.min(HEADER_LEN)];
                self.tx_ring.put(0, h);
                off += h.len();
                at += h.len();
            }
            if at < end {
                let p = &payload[at - HEADER_LEN..end - HEADER_LEN];
                self.tx_ring.put(off, p);
            }
            self.tx_ring.publish(end - tx.whead);
            moved = true;
            if end == total {
                tx.whead = 0;
                if let Some(f) = tx.queue.pop_front() {
                    match f.ticket {
                        Some(t) => done.push(t),
                        None => {
                            self.loose.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                }
                self.queued.store(tx.queue.len(), Ordering::Release);
            } else {
                tx.whead = end;
            }
        }
        Ok(moved)
    }

    /// Whether frames that a call waits for wait for room.
    pub fn awaited(&self) -> bool {
        self.queued.load(Ordering::Acquire) > self.loose.load(Ordering::Acquire)
    }

    /// Whether frames that no call waits for wait for room.
    pub fn loose(&self) -> bool {
        self.loose.load(Ordering::Acquire) > 0
    }

    /// Whether frames wait for room.
    pub fn queued(&self) -> bool {
        self.queued.load(Ordering::Acquire) > 0
    }

    /// Reads every complete header and every payload byte the ring holds,
    /// feeding them to `sink`. True when bytes moved.
    pub fn drain(&self, sink: &mut impl FrameSink) -> Result<bool, Corrupt> {
        let mut rs = lock(&self.rx);
        self.drain_locked(&mut rs, sink)
    }

    /// As [`ShmLink::drain`], unless another thread is at it already.
    pub fn try_drain(&self, sink: &mut impl FrameSink) -> Result<bool, Corrupt> {
        match try_lock(&self.rx) {
            Some(mut rs) => self.drain_locked(&mut rs, sink),
            None => Ok(false),
        }
    }

    fn drain_locked(&self, rs: &mut RxState, sink: &mut impl FrameSink) -> Result<bool, Corrupt> {
        let ring = &self.rx_ring;
        let mut moved = false;
        loop {
            let avail = ring.readable()?;
            if let Some(inc) = &mut rs.incoming {
                let need = inc.header.len as usize - inc.got;
                if need == 0 {
                    if let Some(inc) = rs.incoming.take() {
                        sink.on_payload(self.peer, inc.header, inc.dest);
                    }
                    moved = true;
                    continue;
                }
                if avail == 0 {
                    break;
                }
                let mut n = avail.min(need).min(STEP);
                if let Dest::Fold { mem, fold, .. } = &inc.dest {
                    n -= n % fold.elem;
                    if n == 0 {
                        // Part of an element: wait for the rest.
                        break;
                    }
                    // SAFETY: the posted memory holds `mem.len` bytes and
                    // stays alive until the receive completes or is purged.
                    unsafe { fold_from(ring, fold, mem.ptr.add(inc.got), n) };
                } else if let Some(dst) = dest_slice(&mut inc.dest, inc.got, n) {
                    if streams(&inc.header) {
                        ring.get_streaming(dst);
                    } else {
                        ring.get(0, dst);
                    }
                }
                inc.got += n;
                ring.consume(n);
                moved = true;
                continue;
            }
            if avail < HEADER_LEN {
                break;
            }
            let mut raw = [0u8; HEADER_LEN];
            ring.get(0, &mut raw);
            let header = Header::decode(&raw).ok_or(Corrupt)?;
            let len = usize::try_from(header.len).map_err(|_| Corrupt)?;
            moved = true;
            if len <= avail - HEADER_LEN && !streams(&header) {
                if let Some(s) = ring.contiguous(HEADER_LEN, len) {
                    sink.on_frame(self.peer, &header, s);
                    ring.consume(HEADER_LEN + len);
                    continue;
                }
                if len <= SCRATCH_MAX {
                    rs.scratch.resize(len, 0);
                    ring.get(HEADER_LEN, &mut rs.scratch);
                    sink.on_frame(self.peer, &header, &rs.scratch);
                    ring.consume(HEADER_LEN + len);
                    continue;
                }
            }
            ring.consume(HEADER_LEN);
            let dest = sink.on_header(self.peer, &header, true);
            rs.incoming = Some(Incoming {
                header,
                dest,
                got: 0,
            });
        }
        Ok(moved)
    }

    /// Drops every reference to caller memory after a failure: queued
    /// frames go, a receive in progress is read into the void, and nothing
    /// more is written.
    pub fn purge(&self) {
        {
            let mut tx = self.tx();
            tx.queue.clear();
            tx.broken = true;
            self.queued.store(0, Ordering::Release);
            self.loose.store(0, Ordering::Release);
        }
        let mut rs = lock(&self.rx);
        if let Some(inc) = &mut rs.incoming
            && matches!(inc.dest, Dest::Posted { .. } | Dest::Fold { .. })
        {
            inc.dest = Dest::Discard;
        }
    }

    fn interest(&self) -> MutexGuard<'_, Interest> {
        lock(&self.interest)
    }

    /// The I/O thread watches the incoming ring with `epoll` (called once).
    pub fn register(&self, epoll: RawFd, token: u64) -> std::io::Result<()> {
        let mut i = self.interest();
        epoll_set(epoll, self.rx_ring.data_fd(), token, i.io_armed, true)?;
        i.watch = Some((epoll, token));
        Ok(())
    }

    fn watch(&self, i: &Interest) {
        if let Some((epoll, token)) = i.watch {
            let _ = epoll_set(epoll, self.rx_ring.data_fd(), token, i.io_armed, false);
        }
    }

    /// A caller takes over reading the incoming ring.
    pub fn hold(&self) {
        let mut i = self.interest();
        i.callers += 1;
        if i.io_armed {
            i.io_armed = false;
            self.rx_ring.wait_data(false);
            self.watch(&i);
        }
    }

    pub fn release(&self) {
        let mut i = self.interest();
        i.callers = i.callers.saturating_sub(1);
        if i.callers == 0 {
            i.released_at = Instant::now();
        }
    }

    /// Gives the incoming ring back to the I/O thread when no caller has
    /// held it for `idle`; true while callers keep it. Whoever calls this
    /// must make the I/O thread look at the ring afterwards (bytes that
    /// came meanwhile woke nobody).
    pub fn rearm_if_idle(&self, idle: Duration) -> bool {
        let mut i = self.interest();
        if i.io_armed {
            return false;
        }
        if i.callers > 0 || i.released_at.elapsed() < idle {
            return true;
        }
        i.io_armed = true;
        self.rx_ring.wait_data(true);
        self.watch(&i);
        false
    }

    /// Whether the I/O thread reads the incoming ring now.
    pub fn io_reads(&self) -> bool {
        self.interest().io_armed
    }
}

/// Folds `n` readable bytes (whole elements) from the tail into `dst`; an
/// element split by the ring's end goes through a small buffer.
///
/// # Safety
/// `dst` writable for `n` bytes, aligned for the element type.
unsafe fn fold_from(ring: &Ring, fold: &crate::dtype::Fold, dst: *mut u8, n: usize) {
    let (a, b) = ring.slices(0, n);
    let e = fold.elem;
    let whole = a.len() - a.len() % e;
    // SAFETY: every range below lies inside `a`, `b` or `dst`.
    unsafe {
        fold.apply(a.as_ptr(), dst, whole);
        let mut at = whole;
        let split = a.len() - whole;
        if split > 0 {
            let mut one = [0u8; 16];
            one[..split].copy_from_slice(&a[whole..]);
            one[split..e].copy_from_slice(&b[..e - split]);
            fold.apply(one.as_ptr(), dst.add(at), e);
            at += e;
        }
        let rest = &b[if split > 0 { e - split } else { 0 }..];
        fold.apply(rest.as_ptr(), dst.add(at), rest.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::{DType, Fold, ReduceOp};
    use crate::transport::shm::segment;
    use crate::transport::{Payload, RawMut};
    use crate::wire::{FrameKind, Key, OpDesc, OpKind};

    fn header(len: usize, tag: u64) -> Header {
        Header {
            kind: FrameKind::Data,
            desc: OpDesc {
                kind: OpKind::AllReduce,
                reduce: Some(ReduceOp::Sum),
                dtype: DType::F32,
                count: 0,
                arg: 0,
            },
            key: Key {
                group: 1,
                seq: 2,
                tag,
            },
            len: len as u64,
        }
    }

    /// Folds tag-1 frames into `sums`, keeps the others whole.
    struct Collect {
        sums: Vec<f32>,
        whole: Vec<Vec<u8>>,
        folded: usize,
    }

    impl FrameSink for Collect {
        fn on_header(&mut self, _peer: usize, h: &Header, folds: bool) -> Dest {
            assert!(folds);
            if h.key.tag == 1 {
                Dest::Fold {
                    mem: RawMut {
                        ptr: self.sums.as_mut_ptr().cast(),
                        len: 4 * self.sums.len(),
                    },
                    ticket: 7,
                    fold: Fold::of::<f32>(ReduceOp::Sum),
                }
            } else {
                Dest::Owned(vec![0; h.len as usize])
            }
        }
        fn on_payload(&mut self, _peer: usize, _h: Header, dest: Dest) {
            match dest {
                Dest::Owned(v) => self.whole.push(v),
                Dest::Fold { .. } => self.folded += 1,
                _ => panic!("unexpected destination"),
            }
        }
        fn on_frame(&mut self, _peer: usize, h: &Header, payload: &[u8]) {
            assert_ne!(h.key.tag, 1, "the folded frame never fit whole");
            self.whole.push(payload.to_vec());
        }
    }

    #[test]
    fn frames_wrap_and_fold_across_the_end_of_a_tiny_ring() {
        let ((ma, a0, a1), (mb, b1, b0)) = segment::test_pair(64).unwrap();
        let a = ShmLink::new(1, ma, a0, a1);
        let b = ShmLink::new(0, mb, b1, b0);
        let mut sink = Collect {
            sums: vec![0.5; 10],
            whole: Vec::new(),
            folded: 0,
        };
        // Three odd bytes first, so the f32 payload starts at an odd
        // offset and one element straddles the ring's end.
        assert!(a.send_now(&header(3, 0).encode(), &[1, 2, 3]).unwrap());
        assert!(b.drain(&mut sink).unwrap());
        let values: Vec<f32> = (0..10).map(|i| i as f32 * 1.25).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        a.enqueue(OutFrame {
            peer: 1,
            header: header(bytes.len(), 1).encode(),
            payload: Payload::Owned(bytes),
            ticket: Some(9),
            written: None,
        });
        a.enqueue(OutFrame {
            peer: 1,
            header: header(5, 2).encode(),
            payload: Payload::Owned(vec![5; 5]),
            ticket: Some(10),
            written: None,
        });
        let mut done = Vec::new();
        for _ in 0..100 {
            a.push(&mut done).unwrap();
            b.drain(&mut sink).unwrap();
            if done.len() == 2 && sink.whole.len() == 2 {
                break;
            }
        }
        assert_eq!(done, [9, 10]);
        assert_eq!(sink.folded, 1);
        assert_eq!(sink.whole, [vec![1, 2, 3], vec![5; 5]]);
        let want: Vec<f32> = values.iter().map(|v| v + 0.5).collect();
        assert_eq!(sink.sums, want);
        assert!(!a.queued());
    }

    #[test]
    fn a_garbled_frame_header_is_an_error_not_a_panic() {
        let ((ma, a0, a1), (mb, b1, b0)) = segment::test_pair(64).unwrap();
        let a = ShmLink::new(1, ma, a0, a1);
        let b = ShmLink::new(0, mb, b1, b0);
        // A header that decodes to garbage.
        assert!(a.send_now(&[0xff; HEADER_LEN], &[]).unwrap());
        let mut sink = Collect {
            sums: Vec::new(),
            whole: Vec::new(),
            folded: 0,
        };
        assert!(b.drain(&mut sink).is_err());
    }
}

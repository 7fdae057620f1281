//! The one I/O thread of a process: it blocks in `poll` (never spins),
//! writes queued frames, reads and matches incoming ones, sends heartbeats,
//! and turns a silent or vanished peer into an error naming it. For peers
//! on this host it also moves shared-memory frames, but only while no
//! caller does (`shm_wait`): it watches a ring's eventfds only then.
//!
//! Shutdown is orderly: flush every queue, say Bye on every connection,
//! then wait (briefly) for the peers' end of stream, so that no rank loses
//! data a departing rank had already sent.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use crate::engine::{Shared, encode_abort};

mod sink;
use crate::error::CommError;
use crate::transport::inbound::{Inbound, ReadPass};
use crate::transport::shm::ShmLink;
use crate::transport::shm::link::epoll_set;
use crate::transport::tcp::TcpConn;
use crate::transport::{OutFrame, Payload};
use crate::wire::{FrameKind, Header};
pub(crate) use sink::{Sink, land};

pub(crate) const WAKER: Token = Token(usize::MAX);
/// Tokens of the shared-memory eventfds start here (they only wake the
/// loop, which then looks at every ring).
const SHM_TOKENS: u64 = 1 << 40;
/// How long a departing rank waits for its peers to finish reading.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long a connection stays with callers after the last one let go
/// (see `Inbound::rearm_if_idle`): longer than the gap between the calls
/// of a busy loop, short enough that nothing waits long for this thread.
const LINGER: Duration = Duration::from_millis(5);

struct Peer {
    conns: Vec<usize>,
    next: usize,
    last_recv: Instant,
    /// Crashed, killed, timed out: a failure for everyone.
    lost: bool,
    /// Closed its group cleanly (Bye on every connection).
    gone: bool,
}

enum Closing {
    Open,
    Flushing(Instant),
    Draining(Instant),
}

pub(crate) struct IoThread {
    poll: Poll,
    conns: Vec<TcpConn>,
    peers: Vec<Peer>,
    shared: Arc<Shared>,
    timeout: Duration,
    heartbeat_every: Duration,
    done: Vec<u64>,
    closing: Closing,
    /// What this thread last published in `State::idle`.
    idle: Vec<bool>,
    shm: Vec<Option<Arc<ShmLink>>>,
    /// This thread counts as a sleeping producer of the peer's ring.
    space_armed: Vec<bool>,
}

impl IoThread {
    pub fn new(
        poll: Poll,
        shared: Arc<Shared>,
        streams: Vec<(usize, std::net::TcpStream)>,
        world: usize,
        timeout: Duration,
    ) -> io::Result<IoThread> {
        let now = Instant::now();
        let mut peers: Vec<Peer> = (0..world)
            .map(|_| Peer {
                conns: Vec::new(),
                next: 0,
                last_recv: now,
                lost: false,
                gone: false,
            })
            .collect();
        let mut conns = Vec::new();
        let mut direct_fd = vec![-1; world];
        let mut first: Vec<Option<Arc<Inbound>>> = vec![None; world];
        // The engine keeps the poller open for callers' registration changes.
        let registry = poll.registry().try_clone()?;
        let epoll = std::os::fd::AsRawFd::as_raw_fd(&registry);
        for (peer, s) in streams {
            crate::transport::tcp::tune_stream(&s)?;
            let i = conns.len();
            let inbound = Arc::new(Inbound::new(&s, peer, i, epoll)?);
            if direct_fd[peer] < 0 {
                direct_fd[peer] = std::os::fd::AsRawFd::as_raw_fd(&s);
                first[peer] = Some(inbound.clone());
            }
            let mut stream = mio::net::TcpStream::from_std(s);
            poll.registry()
                .register(&mut stream, Token(i), Interest::READABLE)?;
            peers[peer].conns.push(i);
            conns.push(TcpConn::new(stream, peer, inbound));
        }
        for (p, l) in shared.shm.iter().enumerate() {
            if let Some(l) = l {
                l.register(epoll, SHM_TOKENS + 2 * p as u64)?;
                epoll_set(epoll, l.tx_ring().space_fd(), space_token(p), false, true)?;
            }
        }
        let shm = shared.shm.clone();
        let _ = shared.registry.set(registry);
        let _ = shared.inbound.set(first);
        shared.lock().direct_fd = direct_fd;
        Ok(IoThread {
            poll,
            conns,
            peers,
            shared,
            heartbeat_every: (timeout / 4).clamp(Duration::from_millis(20), Duration::from_secs(1)),
            timeout,
            done: Vec::new(),
            closing: Closing::Open,
            idle: vec![false; world],
            shm,
            space_armed: vec![false; world],
        })
    }

    pub fn spawn(self, rank: usize) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("huddle-io-{rank}"))
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut outbox = Vec::new();
        let mut next_beat = Instant::now();
        let (mut purged, mut closing, mut lingering) = (false, false, false);
        loop {
            let now = Instant::now();
            let mut wait = next_beat.saturating_duration_since(now);
            if lingering {
                wait = wait.min(LINGER);
            }
            if !matches!(self.closing, Closing::Open) {
                wait = wait.min(Duration::from_millis(20));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != io::ErrorKind::Interrupted
            {
                self.fail(CommError::io(self.shared.me, "polling sockets", e));
                break;
            }
            let shutdown = if !self.shared.submitted.swap(false, Ordering::AcqRel) {
                false
            } else {
                let mut st = self.shared.lock();
                std::mem::swap(&mut st.outbox, &mut outbox);
                // This thread may write to these peers' first connection now.
                for f in &outbox {
                    st.idle[f.peer] = false;
                    self.idle[f.peer] = false;
                }
                if st.shutdown {
                    st.idle.iter_mut().for_each(|i| *i = false);
                    self.idle.iter_mut().for_each(|i| *i = false);
                }
                st.shutdown
            };
            for f in outbox.drain(..) {
                self.route(f);
            }
            for ev in events.iter() {
                let t = ev.token();
                if t == WAKER || t.0 >= self.conns.len() {
                    continue;
                }
                if ev.is_writable() {
                    self.conns[t.0].blocked = false;
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    // A peer's end of stream must be read, not inferred.
                    self.read(t.0, ev.is_read_closed() || ev.is_error());
                }
            }
            lingering = false;
            for i in 0..self.conns.len() {
                if self.conns[i].closed {
                    continue;
                }
                // A caller reading this connection saw its end.
                if self.conns[i].inbound.ended.load(Ordering::Acquire) {
                    self.read(i, false);
                    continue;
                }
                match self.conns[i].inbound.rearm_if_idle(LINGER) {
                    Ok(l) => lingering |= l,
                    Err(e) => self.close(i, Some(e)),
                }
            }
            lingering |= self.shm_step();
            self.flush();
            self.complete(shutdown);
            let now = Instant::now();
            if now >= next_beat {
                self.beat(now);
                next_beat = now + self.heartbeat_every;
            }
            if self.shared.failed.load(Ordering::Acquire) && !purged {
                self.purge();
                purged = true;
            }
            closing |= shutdown;
            if closing && self.close_step(now) {
                break;
            }
        }
        for c in &self.conns {
            c.inbound.mark_closed();
        }
        let mut st = self.shared.lock();
        st.idle.iter_mut().for_each(|i| *i = false);
        st.purged = true;
        st.posted.clear();
        self.shared.notify(&st);
    }

    /// Reads the incoming rings this thread is responsible for, writes
    /// queued frames, and counts itself as a waiter for room where frames
    /// wait. True while callers hold a ring (it is taken back later).
    fn shm_step(&mut self) -> bool {
        let mut held = false;
        for p in 0..self.shm.len() {
            let Some(l) = self.shm[p].clone() else {
                continue;
            };
            if self.peers[p].lost {
                continue;
            }
            held |= l.rearm_if_idle(LINGER);
            if l.io_reads() {
                let mut sink = Sink::new(&self.shared, &mut self.done);
                if l.drain(&mut sink).is_err() {
                    self.lose(p, CORRUPT.into());
                    continue;
                }
            }
            // Callers waiting on this link move its bytes themselves.
            let callers = l.pushers.load(Ordering::Acquire) > 0;
            loop {
                if !callers && l.queued() && l.push(&mut self.done).is_err() {
                    self.lose(p, CORRUPT.into());
                    break;
                }
                let want = !callers && l.queued();
                if want == self.space_armed[p] {
                    break;
                }
                l.tx_ring().wait_space(want);
                self.space_armed[p] = want;
                // Only while armed: callers sleeping for room use it too.
                if let Some(r) = self.shared.registry.get() {
                    let epoll = std::os::fd::AsRawFd::as_raw_fd(r);
                    let _ = epoll_set(epoll, l.tx_ring().space_fd(), space_token(p), want, false);
                }
                // Counted now: room freed before that is seen by pushing again.
                if !want {
                    break;
                }
            }
        }
        held
    }

    /// Frames still waiting for room in a live peer's ring (a peer that
    /// left never reads them).
    fn shm_queued(&self) -> bool {
        self.shm.iter().enumerate().any(|(p, l)| {
            l.as_ref().is_some_and(|l| l.queued()) && !self.peers[p].lost && !self.peers[p].gone
        })
    }

    fn fail(&self, err: CommError) {
        if !matches!(self.closing, Closing::Open) {
            return;
        }
        let mut st = self.shared.lock();
        self.shared.poison(&mut st, err);
    }

    fn route(&mut self, f: OutFrame) {
        let p = f.peer;
        let Some(peer) = self.peers.get_mut(p) else {
            return;
        };
        if peer.lost || peer.gone {
            if peer.gone && f.ticket.is_some() {
                self.fail(CommError::PeerLost {
                    rank: p,
                    reason: "it closed its group before receiving data sent to it".into(),
                });
            }
            return;
        }
        if let Some(written) = f.written {
            let Some(&c) = peer.conns.first() else { return };
            if !self.conns[c].closed && !self.conns[c].resume(f, written) {
                self.fail(CommError::io(
                    self.shared.me,
                    format!("writing to rank {p}"),
                    io::Error::other("a partly written frame found its connection busy"),
                ));
            }
            return;
        }
        let open: Vec<usize> = peer
            .conns
            .iter()
            .copied()
            .filter(|&c| !self.conns[c].closed)
            .collect();
        if open.is_empty() {
            return;
        }
        // Small frames go where the receiving caller reads (the first
        // connection); large ones stripe.
        let c = if matches!(f.payload, Payload::Borrowed(_)) {
            peer.next = peer.next.wrapping_add(1);
            open[peer.next % open.len()]
        } else {
            open[0]
        };
        self.conns[c].wqueue.push_back(f);
    }

    /// Control frames go on the first open connection of each live peer.
    fn control(&mut self, kind: FrameKind, payload: Payload) -> usize {
        let mut sent = 0;
        for p in 0..self.peers.len() {
            if self.peers[p].lost || self.peers[p].gone {
                continue;
            }
            // An Abort goes on every connection: the peer may read this
            // rank's end-of-stream on any of them first, and must see why
            // before it sees us go (or it would blame this rank).
            let live: Vec<usize> = self.peers[p]
                .conns
                .iter()
                .copied()
                .filter(|&c| !self.conns[c].closed)
                .take(if kind == FrameKind::Abort {
                    usize::MAX
                } else {
                    1
                })
                .collect();
            if live.is_empty() {
                continue;
            }
            self.claim(p);
            for c in live {
                let payload = match &payload {
                    Payload::Owned(v) => Payload::Owned(v.clone()),
                    _ => Payload::Empty,
                };
                self.conns[c].wqueue.push_back(OutFrame {
                    peer: p,
                    header: Header::control(kind, payload.len() as u64).encode(),
                    payload,
                    ticket: None,
                    written: None,
                });
            }
            sent += 1;
        }
        sent
    }

    fn read(&mut self, i: usize, to_the_end: bool) {
        if self.conns[i].closed {
            return;
        }
        let inbound = self.conns[i].inbound.clone();
        let peer = inbound.peer;
        let r = {
            let mut rs = inbound.lock();
            match rs.ended.take() {
                // A caller reading this connection saw its end.
                Some(None) => Ok(ReadPass {
                    got_bytes: false,
                    eof: true,
                }),
                Some(Some(e)) => Err(e),
                None => {
                    let mut sink = Sink::new(&self.shared, &mut self.done);
                    let r = rs.read_ready(inbound.fd(), peer, &mut sink, to_the_end);
                    if sink.bye {
                        rs.bye_seen = true;
                    }
                    r
                }
            }
        };
        match r {
            Ok(pass) => {
                if pass.got_bytes {
                    self.peers[peer].last_recv = Instant::now();
                }
                if pass.eof {
                    self.close(i, None);
                }
            }
            Err(e) => self.close(i, Some(e)),
        }
    }

    fn flush(&mut self) {
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if c.closed || c.blocked || c.wqueue.is_empty() {
                continue;
            }
            if let Err(e) = c.write_ready(&mut self.done) {
                self.close(i, Some(e));
                continue;
            }
            // Watch for writability only while a write is stuck.
            if let Err(e) = c.inbound.watch_writes(c.blocked) {
                self.close(i, Some(e));
            }
        }
    }

    /// Publishes completed sends, and which first connections callers may
    /// write to themselves.
    fn complete(&mut self, shutdown: bool) {
        let free: Vec<usize> = if shutdown || !matches!(self.closing, Closing::Open) {
            Vec::new()
        } else {
            (0..self.peers.len())
                .filter(|&p| !self.idle[p] && !self.peers[p].lost && !self.peers[p].gone)
                .filter(|&p| {
                    self.peers[p]
                        .conns
                        .first()
                        .is_some_and(|&c| !self.conns[c].closed && self.conns[c].wqueue.is_empty())
                })
                .collect()
        };
        if self.done.is_empty() && free.is_empty() {
            return;
        }
        let mut st = self.shared.lock();
        if st.error.is_none() {
            for p in free {
                st.idle[p] = true;
                self.idle[p] = true;
            }
        }
        if !self.done.is_empty() {
            st.completed.extend(self.done.drain(..));
            self.shared.notify(&st);
        }
    }

    /// Takes a peer's first connection back from callers before this thread
    /// writes to it or closes it.
    fn claim(&mut self, p: usize) {
        if self.idle[p] {
            self.idle[p] = false;
            self.shared.lock().idle[p] = false;
        }
    }

    fn close(&mut self, i: usize, err: Option<io::Error>) {
        if self.conns[i].closed {
            return;
        }
        self.claim(self.conns[i].peer);
        let c = &mut self.conns[i];
        c.closed = true;
        c.wqueue.clear();
        // Callers stop changing the registration before it goes.
        c.inbound.mark_closed();
        let _ = self.poll.registry().deregister(&mut c.stream);
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        let (p, clean) = (c.peer, c.inbound.lock().bye_seen);
        if self.peers[p].lost || self.peers[p].gone {
            return;
        }
        if !clean {
            self.lose(
                p,
                match err {
                    None => "its connection closed unexpectedly (the process exited, crashed or was killed)".into(),
                    Some(e) => format!("connection error: {e}"),
                },
            );
            return;
        }
        if self.peers[p].conns.iter().all(|&c| self.conns[c].closed) {
            // Everything it sent before its Bye is in the ring by now.
            if let Some(l) = self.shm[p].clone() {
                let mut sink = Sink::new(&self.shared, &mut self.done);
                let _ = l.drain(&mut sink);
                let mut st = self.shared.lock();
                st.completed.extend(self.done.drain(..));
                self.shared.notify(&st);
            }
            self.peers[p].gone = true;
            let mut st = self.shared.lock();
            st.gone[p] = true;
            let waiting = st.posted.keys().any(|(src, _)| *src == p);
            if waiting && matches!(self.closing, Closing::Open) {
                let err = CommError::PeerLost {
                    rank: p,
                    reason: "it closed its group while this rank still expected data from it"
                        .into(),
                };
                self.shared.poison(&mut st, err);
            }
        }
    }

    fn lose(&mut self, p: usize, reason: String) {
        self.peers[p].lost = true;
        for k in 0..self.peers[p].conns.len() {
            let c = self.peers[p].conns[k];
            self.close(c, None);
        }
        self.fail(CommError::PeerLost { rank: p, reason });
    }

    fn beat(&mut self, now: Instant) {
        if !matches!(self.closing, Closing::Open) {
            return;
        }
        self.control(FrameKind::Heartbeat, Payload::Empty);
        for c in &self.conns {
            if c.inbound.got_bytes.swap(false, Ordering::Relaxed) {
                self.peers[c.peer].last_recv = now;
            }
        }
        for p in 0..self.peers.len() {
            let peer = &self.peers[p];
            if peer.lost || peer.gone || peer.conns.is_empty() {
                continue;
            }
            let silent = now.saturating_duration_since(peer.last_recv);
            if silent > self.timeout {
                self.lose(
                    p,
                    format!(
                        "it sent nothing for {:.1} s (HUDDLE_PEER_TIMEOUT is {:.1} s): stopped, hung or unreachable",
                        silent.as_secs_f64(),
                        self.timeout.as_secs_f64()
                    ),
                );
            }
        }
        self.flush();
    }

    /// Drops every pointer into caller memory, then tells the peers why this
    /// rank is failing.
    fn purge(&mut self) {
        for c in &mut self.conns {
            c.purge();
        }
        for l in self.shm.iter().flatten() {
            l.purge();
        }
        let err = {
            let mut st = self.shared.lock();
            st.posted.clear();
            st.purged = true;
            self.shared.notify(&st);
            st.error.clone()
        };
        if let Some(payload) = err.and_then(|e| encode_abort(&e, self.shared.me)) {
            self.control(FrameKind::Abort, Payload::Owned(payload));
            self.flush();
        }
    }

    /// One step of the orderly shutdown; true when the thread may exit.
    fn close_step(&mut self, now: Instant) -> bool {
        let queued =
            self.conns.iter().any(|c| !c.closed && !c.wqueue.is_empty()) || self.shm_queued();
        match self.closing {
            Closing::Open => {
                self.closing = Closing::Flushing(now + self.timeout.min(Duration::from_secs(10)));
                false
            }
            Closing::Flushing(deadline) => {
                if queued && now < deadline {
                    return false;
                }
                for c in &mut self.conns {
                    if !c.closed {
                        c.wqueue.push_back(OutFrame {
                            peer: c.peer,
                            header: Header::control(FrameKind::Bye, 0).encode(),
                            payload: Payload::Empty,
                            ticket: None,
                            written: None,
                        });
                    }
                }
                self.flush();
                for c in &self.conns {
                    if !c.closed {
                        let _ = c.stream.shutdown(std::net::Shutdown::Write);
                    }
                }
                self.closing = Closing::Draining(now + DRAIN_LIMIT);
                false
            }
            Closing::Draining(deadline) => now >= deadline || self.conns.iter().all(|c| c.closed),
        }
    }
}

const CORRUPT: &str = "its shared-memory ring holds impossible positions (memory corrupted)";

fn space_token(peer: usize) -> u64 {
    SHM_TOKENS + 2 * peer as u64 + 1
}

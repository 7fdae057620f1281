//! The receiving half of one TCP connection, shared between the I/O thread
//! and callers: a caller blocked on a small receive reads the socket
//! itself, so a message costs one thread wake-up (the caller's) instead of
//! two (the I/O thread's, then the caller's).
//!
//! While a caller holds a connection ([`Inbound::acquire`]), the socket is
//! taken out of the I/O thread's read interest, so the I/O thread is not
//! woken for bytes it would not read; giving it back re-arms the
//! (edge-triggered) registration, which reports any bytes still unread.
//! Whoever reads, reads under [`Inbound::state`]: frames are parsed in one
//! place, in order.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Dest, FrameSink};
use crate::wire::{HEADER_LEN, Header};

/// Payloads at least this large are read straight into their destination.
const DIRECT_READ_MIN: usize = 16 * 1024;
const READ_BUFFER: usize = 256 * 1024;

struct Incoming {
    header: Header,
    dest: Dest,
    got: usize,
}

/// The framing state of a connection's incoming bytes.
pub(crate) struct ReadState {
    rbuf: Box<[u8]>,
    rpos: usize,
    rend: usize,
    incoming: Option<Incoming>,
    /// A Bye frame arrived: the EOF that follows is a clean close.
    pub bye_seen: bool,
    /// A caller saw the end of the stream (None) or an error (Some): the
    /// I/O thread closes the connection.
    pub ended: Option<Option<io::Error>>,
}

/// What one read pass saw.
pub(crate) struct ReadPass {
    pub got_bytes: bool,
    pub eof: bool,
}

/// Who wants the socket's readable events.
struct Interest {
    /// Callers reading this connection themselves.
    callers: usize,
    /// Read interest is off. It stays off a while after the last caller
    /// leaves ([`Inbound::rearm_if_idle`]), so a caller making call after
    /// call pays no registration changes, and bytes arriving between its
    /// calls do not wake the I/O thread.
    disarmed: bool,
    /// When the last caller left.
    released_at: Instant,
    /// The I/O thread waits for room to write.
    writes: bool,
    /// Deregistered by the I/O thread: nobody touches the registration.
    closed: bool,
}

/// The shared receiving half of one connection.
pub(crate) struct Inbound {
    /// A duplicate of the socket, so callers never use a closed (or
    /// reused) descriptor number.
    fd: OwnedFd,
    /// The descriptor number registered with the poller, and its token.
    registered: RawFd,
    token: u64,
    epoll: RawFd,
    pub peer: usize,
    pub state: Mutex<ReadState>,
    interest: Mutex<Interest>,
    /// A caller read bytes (the peer is alive); the I/O thread collects it.
    pub got_bytes: AtomicBool,
    /// A caller set `ReadState::ended`.
    pub ended: AtomicBool,
}

impl Inbound {
    /// `epoll` must stay open as long as this value (the engine keeps a
    /// clone of the registry).
    pub fn new(
        stream: &std::net::TcpStream,
        peer: usize,
        token: usize,
        epoll: RawFd,
    ) -> io::Result<Inbound> {
        let fd: OwnedFd = stream.try_clone()?.into();
        Ok(Inbound {
            registered: stream.as_raw_fd(),
            fd,
            token: token as u64,
            epoll,
            peer,
            state: Mutex::new(ReadState {
                rbuf: vec![0u8; READ_BUFFER].into_boxed_slice(),
                rpos: 0,
                rend: 0,
                incoming: None,
                bye_seen: false,
                ended: None,
            }),
            interest: Mutex::new(Interest {
                callers: 0,
                disarmed: false,
                released_at: Instant::now(),
                writes: false,
                closed: false,
            }),
            got_bytes: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn lock(&self) -> MutexGuard<'_, ReadState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn interest(&self) -> MutexGuard<'_, Interest> {
        self.interest.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, i: &Interest) -> io::Result<()> {
        // What mio registers (edge-triggered), minus reads while callers
        // hold the connection. Errors and hang-ups are always reported.
        let mut events = libc::EPOLLET as u32;
        if !i.disarmed {
            events |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        }
        if i.writes {
            events |= libc::EPOLLOUT as u32;
        }
        let mut ev = libc::epoll_event {
            events,
            u64: self.token,
        };
        // SAFETY: valid epoll and socket descriptors (the registration
        // is only touched until `closed` is set), a valid event.
        let r =
            unsafe { libc::epoll_ctl(self.epoll, libc::EPOLL_CTL_MOD, self.registered, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A caller takes over reading; false when the connection is closed
    /// (or cannot be switched), and the I/O thread keeps reading it.
    pub fn acquire(&self) -> bool {
        let mut i = self.interest();
        if i.closed {
            return false;
        }
        if !i.disarmed {
            i.disarmed = true;
            if self.apply(&i).is_err() {
                i.disarmed = false;
                return false;
            }
        }
        i.callers += 1;
        true
    }

    /// A caller is done reading. The I/O thread gets the connection back
    /// later, from [`Inbound::rearm_if_idle`].
    pub fn release(&self) {
        let mut i = self.interest();
        i.callers = i.callers.saturating_sub(1);
        if i.callers == 0 {
            i.released_at = Instant::now();
        }
    }

    /// Gives reading back to the I/O thread when no caller has held the
    /// connection for `idle`. Re-arming the edge-triggered registration
    /// reports bytes that arrived meanwhile. Ok(true) while still disarmed.
    pub fn rearm_if_idle(&self, idle: Duration) -> io::Result<bool> {
        let mut i = self.interest();
        if !i.disarmed || i.closed {
            return Ok(false);
        }
        if i.callers > 0 || i.released_at.elapsed() < idle {
            return Ok(true);
        }
        i.disarmed = false;
        if let Err(e) = self.apply(&i) {
            i.disarmed = true;
            return Err(e);
        }
        Ok(false)
    }

    /// The I/O thread's write interest (while a write is stuck).
    pub fn watch_writes(&self, on: bool) -> io::Result<()> {
        let mut i = self.interest();
        if i.closed || i.writes == on {
            return Ok(());
        }
        i.writes = on;
        self.apply(&i)
    }

    /// The I/O thread deregistered the socket.
    pub fn mark_closed(&self) {
        self.interest().closed = true;
    }
}

impl ReadState {
    /// Reads what the socket holds, feeding complete frames to `sink`. A
    /// short read ends the pass early (edge-triggered polling reports any
    /// newer data) unless `to_the_end`: after the peer's FIN, only reading
    /// until end of stream shows it.
    pub fn read_ready(
        &mut self,
        fd: RawFd,
        peer: usize,
        sink: &mut impl FrameSink,
        to_the_end: bool,
    ) -> io::Result<ReadPass> {
        let mut pass = ReadPass {
            got_bytes: false,
            eof: false,
        };
        let mut drained = false;
        loop {
            if let Some(inc) = &mut self.incoming {
                let len = inc.header.len as usize;
                let need = len - inc.got;
                if need == 0 {
                    let Some(inc) = self.incoming.take() else {
                        unreachable!()
                    };
                    sink.on_payload(peer, inc.header, inc.dest);
                    continue;
                }
                let avail = self.rend - self.rpos;
                if avail > 0 {
                    let n = avail.min(need);
                    if let Some(dst) = dest_slice(&mut inc.dest, inc.got, n) {
                        dst.copy_from_slice(&self.rbuf[self.rpos..self.rpos + n]);
                    }
                    inc.got += n;
                    self.rpos += n;
                    continue;
                }
                if need >= DIRECT_READ_MIN
                    && let Some(dst) = dest_slice(&mut inc.dest, inc.got, need)
                {
                    match recv(fd, dst) {
                        Ok(0) => {
                            pass.eof = true;
                            return Ok(pass);
                        }
                        Ok(n) => {
                            pass.got_bytes = true;
                            inc.got += n;
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(pass),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
            } else if self.rend - self.rpos >= HEADER_LEN {
                let mut raw = [0u8; HEADER_LEN];
                raw.copy_from_slice(&self.rbuf[self.rpos..self.rpos + HEADER_LEN]);
                self.rpos += HEADER_LEN;
                let header = Header::decode(&raw).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "corrupt frame header")
                })?;
                let len = header.len as usize;
                if len <= self.rend - self.rpos {
                    sink.on_frame(peer, &header, &self.rbuf[self.rpos..self.rpos + len]);
                    self.rpos += len;
                    continue;
                }
                let dest = sink.on_header(peer, &header, false);
                self.incoming = Some(Incoming {
                    header,
                    dest,
                    got: 0,
                });
                continue;
            }
            if self.rpos == self.rend {
                self.rpos = 0;
                self.rend = 0;
            } else if self.rpos > 0 && self.rend == self.rbuf.len() {
                self.rbuf.copy_within(self.rpos..self.rend, 0);
                self.rend -= self.rpos;
                self.rpos = 0;
            }
            if drained && !to_the_end {
                // The last read came up short: the socket was empty then,
                // and edge-triggered polling reports anything newer.
                return Ok(pass);
            }
            let space = self.rbuf.len() - self.rend;
            match recv(fd, &mut self.rbuf[self.rend..]) {
                Ok(0) => {
                    pass.eof = true;
                    return Ok(pass);
                }
                Ok(n) => {
                    pass.got_bytes = true;
                    drained = n < space;
                    self.rend += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(pass),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Drops every reference to caller memory (after a failure): a posted
    /// receive in progress is read into the void.
    pub fn purge(&mut self) {
        if let Some(inc) = &mut self.incoming
            && matches!(inc.dest, Dest::Posted { .. } | Dest::Fold { .. })
        {
            inc.dest = Dest::Discard;
        }
    }
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length; fd is an open socket.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub(crate) fn dest_slice(dest: &mut Dest, at: usize, n: usize) -> Option<&mut [u8]> {
    match dest {
        // SAFETY: the posted memory is `mem.len` bytes and stays alive until
        // this receive completes or is purged (engine::Op guarantees it).
        Dest::Posted { mem, .. } => {
            Some(unsafe { std::slice::from_raw_parts_mut(mem.ptr.add(at), n) })
        }
        Dest::Owned(v) => Some(&mut v[at..at + n]),
        // Never handed to a byte stream (the sink folds those itself).
        Dest::Fold { .. } | Dest::Discard => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Interest as Wanted, Poll, Token};
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    fn readable(poll: &mut Poll, token: usize) -> bool {
        let mut events = Events::with_capacity(8);
        poll.poll(&mut events, Some(Duration::from_millis(200)))
            .unwrap();
        events
            .iter()
            .any(|e| e.token() == Token(token) && e.is_readable())
    }

    #[test]
    fn a_held_connection_does_not_wake_the_poller_and_rearming_reports_what_came() {
        let mut poll = Poll::new().unwrap();
        let (mut client, server) = pair();
        server.set_nonblocking(true).unwrap();
        let inbound = Inbound::new(&server, 1, 7, poll.as_raw_fd()).unwrap();
        let mut stream = mio::net::TcpStream::from_std(server);
        poll.registry()
            .register(&mut stream, Token(7), Wanted::READABLE)
            .unwrap();

        assert!(inbound.acquire());
        client.write_all(b"x").unwrap();
        assert!(!readable(&mut poll, 7), "a held connection woke the poller");

        inbound.release();
        assert!(inbound.rearm_if_idle(Duration::from_secs(3600)).unwrap());
        assert!(!readable(&mut poll, 7), "re-armed before the linger ended");
        assert!(!inbound.rearm_if_idle(Duration::ZERO).unwrap());
        assert!(
            readable(&mut poll, 7),
            "bytes that came while held were lost"
        );
    }

    #[test]
    fn a_closed_connection_cannot_be_held() {
        let poll = Poll::new().unwrap();
        let (_client, server) = pair();
        let inbound = Inbound::new(&server, 1, 0, poll.as_raw_fd()).unwrap();
        inbound.mark_closed();
        assert!(!inbound.acquire());
    }
}

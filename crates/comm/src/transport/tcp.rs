//! TCP: socket tuning, and one non-blocking connection: its write side
//! gathers queued frames into `writev` calls; its read side
//! ([`Inbound`]) parses frames into a `FrameSink`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::time::Duration;

use std::sync::Arc;

use super::inbound::Inbound;
use super::{OutFrame, Payload};
use crate::wire::HEADER_LEN;

/// Kernel socket buffers: large enough for a pipelined ring on fast links.
const SOCKET_BUFFER: libc::c_int = 4 << 20;
const MAX_IOVECS: usize = 64;

fn set_buffers(fd: libc::c_int) {
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: a valid fd and a c_int option value of the right size.
        // Failure only leaves the kernel default, which still works.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&SOCKET_BUFFER as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// Accepted sockets inherit these, before their window is negotiated.
pub(crate) fn tune_listener(l: &TcpListener) {
    set_buffers(l.as_raw_fd());
}

pub(crate) fn tune_stream(s: &std::net::TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    set_buffers(s.as_raw_fd());
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    s.set_nonblocking(true)
}

/// Blocks until one of `ls` has a connection to accept or `timeout` passes.
pub(crate) fn wait_readable(ls: &[TcpListener], timeout: Duration) -> bool {
    let mut pfds: Vec<libc::pollfd> = ls
        .iter()
        .map(|l| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfds` holds `pfds.len()` valid pollfds.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    r > 0
}

/// One framed, non-blocking connection to a peer.
pub(crate) struct TcpConn {
    pub stream: mio::net::TcpStream,
    pub peer: usize,
    /// The receiving half, shared with callers that read it themselves.
    pub inbound: Arc<Inbound>,
    pub wqueue: VecDeque<OutFrame>,
    /// Bytes of the front frame (header included) already written.
    whead: usize,
    pub closed: bool,
    /// The last write hit a full socket: wait for a writable event.
    pub blocked: bool,
}

impl TcpConn {
    pub fn new(stream: mio::net::TcpStream, peer: usize, inbound: Arc<Inbound>) -> Self {
        TcpConn {
            stream,
            peer,
            inbound,
            wqueue: VecDeque::new(),
            whead: 0,
            closed: false,
            blocked: false,
        }
    }

    /// Writes queued frames until the socket would block or the queue is
    /// empty; tickets of fully written frames go to `done`.
    pub fn write_ready(&mut self, done: &mut Vec<u64>) -> io::Result<()> {
        while !self.wqueue.is_empty() {
            let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
            let mut k = 0;
            for (i, f) in self.wqueue.iter().enumerate() {
                if k + 2 > MAX_IOVECS {
                    break;
                }
                let skip = if i == 0 { self.whead } else { 0 };
                if skip < HEADER_LEN {
                    slices[k] = IoSlice::new(&f.header[skip..]);
                    k += 1;
                }
                let pskip = skip.saturating_sub(HEADER_LEN);
                let p = f.payload.bytes();
                if pskip < p.len() {
                    slices[k] = IoSlice::new(&p[pskip..]);
                    k += 1;
                }
            }
            match self.stream.write_vectored(&slices[..k]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket accepted no bytes",
                    ));
                }
                Ok(n) => self.advance(n, done),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn advance(&mut self, mut n: usize, done: &mut Vec<u64>) {
        while n > 0 {
            let Some(front) = self.wqueue.front() else {
                return;
            };
            let rem = HEADER_LEN + front.payload.len() - self.whead;
            if n >= rem {
                n -= rem;
                self.whead = 0;
                if let Some(f) = self.wqueue.pop_front() {
                    done.extend(f.ticket);
                }
            } else {
                self.whead += n;
                n = 0;
            }
        }
    }

    /// Queues the rest of a frame a caller started writing itself; the
    /// engine only lets callers write while this queue is empty.
    pub fn resume(&mut self, f: OutFrame, written: usize) -> bool {
        if !self.wqueue.is_empty() {
            return false;
        }
        self.whead = written;
        self.wqueue.push_back(f);
        true
    }

    /// Drops every reference to caller memory (after a failure): a posted
    /// receive in progress is read into the void, and borrowed payloads are
    /// copied (the one partly written, to keep the stream framed) or dropped.
    pub fn purge(&mut self) {
        self.inbound.lock().purge();
        let whead = self.whead;
        let mut kept = VecDeque::new();
        for (i, mut f) in self.wqueue.drain(..).enumerate() {
            let started = i == 0 && whead > 0;
            if let Payload::Borrowed(_) = f.payload {
                if !started {
                    continue;
                }
                f.payload = Payload::Owned(f.payload.bytes().to_vec());
            }
            f.ticket = None;
            kept.push_back(f);
        }
        self.wqueue = kept;
    }
}

/// A caller's own attempt to write a small frame without waking the I/O
/// thread: returns the bytes written (0 when the socket is full or failing;
/// the I/O thread then handles the frame and any error).
pub(crate) fn write_direct(fd: std::os::fd::RawFd, header: &[u8], payload: &[u8]) -> usize {
    let iov = [
        libc::iovec {
            iov_base: header.as_ptr() as *mut libc::c_void,
            iov_len: header.len(),
        },
        libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        },
    ];
    // SAFETY: a zeroed msghdr is valid; the iovecs outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = if payload.is_empty() { 1 } else { 2 };
    // MSG_NOSIGNAL: a peer that vanished must give an error, not SIGPIPE.
    // SAFETY: fd is a connected, non-blocking socket the I/O thread keeps open.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    n.max(0) as usize
}

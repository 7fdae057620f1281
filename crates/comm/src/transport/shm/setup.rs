//! Deciding, at join time, which peers share this rank's host, and
//! handing each such pair its segment.
//!
//! "Same host" means the same kernel (boot id), the same network namespace
//! (its inode: test hosts are namespaces on one kernel and must stay apart)
//! and the same hostname, or the same `HUDDLE_SHM_HOST_KEY` when that is
//! set (tests fake hosts with it). Every rank says its key, pid and the
//! name of an abstract unix socket on its first TCP connection to each
//! peer; for each same-host pair the lower rank creates the segment and
//! passes its descriptors over that socket (SCM_RIGHTS) to the higher
//! rank, whose pid it checks (SO_PEERCRED). Abstract sockets vanish with
//! their process and belong to one network namespace, and the segment is
//! an anonymous memfd: nothing is ever named in /dev/shm.
//!
//! Both ranks of a pair then say over TCP whether their side worked, and
//! the pair uses shared memory only when both did: any failure is a quiet
//! fallback to TCP, never an error. Pairs are handled in one global order
//! (by lower rank, then higher), so nobody waits in a cycle.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::link::ShmLink;
use super::segment::{self, FDS};
use crate::codec::{Decoder, Encoder, read_msg, write_msg};
use crate::config::Config;
use crate::error::{CommError, Result};

struct Hello {
    capable: bool,
    key: String,
    pid: u32,
    name: String,
}

/// What identifies this rank's host for shared memory; `None` when it
/// cannot be told (then nothing is shared).
pub(crate) fn locality_key(host_key: Option<&str>) -> Option<String> {
    if let Some(k) = host_key {
        return Some(format!("key:{k}"));
    }
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::metadata("/proc/self/ns/net").ok()?;
    let mut host = [0u8; 256];
    // SAFETY: the buffer is valid for its length.
    let r = unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) };
    if r != 0 {
        return None;
    }
    let end = host.iter().position(|&b| b == 0).unwrap_or(host.len());
    use std::os::unix::fs::MetadataExt;
    Some(format!(
        "{}/{}:{}/{}",
        boot.trim(),
        ns.dev(),
        ns.ino(),
        String::from_utf8_lossy(&host[..end])
    ))
}

fn encode_hello(h: &Hello) -> Vec<u8> {
    let mut e = Encoder::default();
    e.u8(u8::from(h.capable))
        .str(&h.key)
        .u32(h.pid)
        .str(&h.name);
    e.0
}

fn decode_hello(b: &[u8]) -> Option<Hello> {
    let mut d = Decoder::new(b);
    Some(Hello {
        capable: d.u8()? == 1,
        key: d.str()?,
        pid: d.u32()?,
        name: d.str()?,
    })
}

fn listen() -> io::Result<(UnixListener, String)> {
    let name = format!(
        "huddle-shm-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    );
    let l = UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
    l.set_nonblocking(true)?;
    Ok((l, name))
}

/// The shared-memory link of every same-host peer (`None`: TCP only).
/// Errors only for the TCP exchange itself (a peer that vanished).
pub(crate) fn establish(
    cfg: &Config,
    enabled: bool,
    conns: &mut [(usize, TcpStream)],
) -> Result<Vec<Option<Arc<ShmLink>>>> {
    let (me, world) = (cfg.rank, cfg.world_size);
    let mut links: Vec<Option<Arc<ShmLink>>> = (0..world).map(|_| None).collect();
    if !enabled || world < 2 {
        return Ok(links);
    }
    let deadline = Instant::now() + cfg.join_timeout;
    let mut first: Vec<Option<usize>> = vec![None; world];
    for (i, (p, _)) in conns.iter().enumerate() {
        if *p < world {
            first[*p].get_or_insert(i);
        }
    }
    let key = locality_key(cfg.shm_host_key.as_deref());
    let listener = match key.as_ref().map(|_| listen()) {
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            tracing::debug!("rank {me}: no shared memory (abstract socket: {e})");
            None
        }
        None => {
            tracing::debug!("rank {me}: no shared memory (cannot tell this host's identity)");
            None
        }
    };
    let mine = Hello {
        capable: listener.is_some(),
        key: key.unwrap_or_default(),
        pid: std::process::id(),
        name: listener.as_ref().map(|l| l.1.clone()).unwrap_or_default(),
    };
    let io_err = |p: usize, what: &str| {
        let what = format!("{what} rank {p} (shared-memory setup)");
        move |e| CommError::io(me, what, e)
    };
    // Bootstrap bounded each read by the join time left when the
    // connection was made; this exchange gets the whole budget again.
    let bound = cfg.join_timeout.min(Duration::from_secs(30));
    for (p, i) in first.iter().enumerate() {
        if let Some(i) = *i {
            let s = &conns[i].1;
            s.set_read_timeout(Some(bound))
                .and_then(|()| s.set_write_timeout(Some(bound)))
                .map_err(io_err(p, "setting up the connection to"))?;
        }
    }
    let hello = encode_hello(&mine);
    for (p, i) in first.iter().enumerate() {
        if let Some(i) = *i {
            write_msg(&mut conns[i].1, &hello).map_err(io_err(p, "greeting"))?;
        }
    }
    let mut theirs: Vec<Option<Hello>> = (0..world).map(|_| None).collect();
    for p in 0..world {
        if let Some(i) = first[p] {
            let body = read_msg(&mut conns[i].1).map_err(io_err(p, "reading the greeting of"))?;
            theirs[p] = Some(decode_hello(&body).ok_or_else(|| {
                CommError::Bootstrap(format!("rank {p} sent a malformed shared-memory greeting"))
            })?);
        }
    }
    let pids: Vec<Option<u32>> = theirs.iter().map(|h| h.as_ref().map(|h| h.pid)).collect();
    let mut stash: Vec<Option<UnixStream>> = (0..world).map(|_| None).collect();
    for p in 0..world {
        let (Some(i), Some(h)) = (first[p], &theirs[p]) else {
            continue;
        };
        if !(mine.capable && h.capable && mine.key == h.key) {
            continue;
        }
        let tcp_fd = conns[i].1.as_raw_fd();
        let attempt = if me < p {
            listener.as_ref().and_then(|(l, _)| {
                let s = accept_from(l, p, &pids, tcp_fd, deadline, &mut stash)?;
                serve(s, p)
            })
        } else {
            fetch(&h.name, me, h.pid, p, deadline)
        };
        let attempt = attempt.and_then(|r| {
            r.map_err(|e| tracing::debug!("rank {me}: no shared memory with rank {p}: {e}"))
                .ok()
        });
        let tcp = &mut conns[i].1;
        write_msg(tcp, &[u8::from(attempt.is_some())]).map_err(io_err(p, "telling"))?;
        let verdict = read_msg(tcp).map_err(io_err(p, "hearing from"))?;
        if verdict.first() == Some(&1) {
            links[p] = attempt.map(Arc::new);
        }
        if links[p].is_none() {
            tracing::debug!("rank {me}: rank {p} shares this host but talks over TCP");
        }
    }
    Ok(links)
}

fn left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn peer_pid(fd: RawFd) -> Option<u32> {
    // SAFETY: an all-zero ucred is valid to fill.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid descriptor, out pointer and length.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred.pid as u32)
}

/// The lower rank's side: the connection of rank `p`, checked by pid.
/// Others that come first are kept for later pairs. `None` when `p` gave
/// up (its verdict arrived on TCP) or the join time ran out.
fn accept_from(
    l: &UnixListener,
    p: usize,
    pids: &[Option<u32>],
    tcp_fd: RawFd,
    deadline: Instant,
    stash: &mut [Option<UnixStream>],
) -> Option<UnixStream> {
    loop {
        if let Some(s) = stash[p].take() {
            return Some(s);
        }
        let wait = left(deadline)?;
        let mut fds = [
            libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: tcp_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = wait.as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n <= 0 {
            continue;
        }
        if fds[1].revents != 0 {
            return None;
        }
        let Ok((mut s, _)) = l.accept() else { continue };
        let greeted = (|| -> io::Result<usize> {
            s.set_nonblocking(false)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.set_write_timeout(Some(Duration::from_secs(5)))?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b)?;
            Ok(u32::from_le_bytes(b) as usize)
        })();
        let Ok(claimed) = greeted else { continue };
        // Only a rank's own process may claim it.
        if claimed < pids.len()
            && pids[claimed].is_some()
            && peer_pid(s.as_raw_fd()) == pids[claimed]
        {
            stash[claimed] = Some(s);
        } else {
            tracing::warn!("shared-memory setup: refused a connection claiming rank {claimed}");
        }
    }
}

/// The lower rank creates the segment, sends it, and maps its own side.
fn serve(mut s: UnixStream, p: usize) -> Option<io::Result<ShmLink>> {
    let r = (|| -> io::Result<ShmLink> {
        let fds = match segment::create() {
            Ok(f) => f,
            Err(e) => {
                let _ = send_fds(&s, 0, &[]);
                return Err(e);
            }
        };
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        send_fds(&s, 1, &raw)?;
        let (map, tx, rx) = segment::map(fds, true)?;
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack)?;
        if ack[0] != 1 {
            return Err(io::Error::other("the peer could not map the segment"));
        }
        Ok(ShmLink::new(p, map, tx, rx))
    })();
    Some(r)
}

/// The higher rank's side: connect to the lower rank's socket, check its
/// pid, receive and map the segment.
fn fetch(
    name: &str,
    me: usize,
    pid: u32,
    p: usize,
    deadline: Instant,
) -> Option<io::Result<ShmLink>> {
    let r = (|| -> io::Result<ShmLink> {
        let wait = left(deadline).ok_or_else(|| io::Error::other("join time ran out"))?;
        let mut s = UnixStream::connect_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
        if peer_pid(s.as_raw_fd()) != Some(pid) {
            return Err(io::Error::other("the socket belongs to another process"));
        }
        s.set_read_timeout(Some(wait))?;
        s.set_write_timeout(Some(wait))?;
        s.write_all(&(me as u32).to_le_bytes())?;
        let (status, fds) = recv_fds(&s)?;
        if status != 1 {
            return Err(io::Error::other("the peer could not create a segment"));
        }
        match segment::map(fds, false) {
            Ok((map, tx, rx)) => {
                s.write_all(&[1])?;
                Ok(ShmLink::new(p, map, tx, rx))
            }
            Err(e) => {
                let _ = s.write_all(&[0]);
                Err(e)
            }
        }
    })();
    Some(r)
}

fn cmsg_space() -> usize {
    // SAFETY: pure arithmetic.
    unsafe { libc::CMSG_SPACE((FDS * std::mem::size_of::<RawFd>()) as u32) as usize }
}

fn send_fds(s: &UnixStream, status: u8, fds: &[RawFd]) -> io::Result<()> {
    let byte = [status];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let mut cbuf = vec![0u64; cmsg_space().div_ceil(8)];
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives
    // the call, and the control buffer is large enough for FDS descriptors.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() && fds.len() <= FDS {
            let bytes = std::mem::size_of_val(fds);
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(bytes as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                fds.len(),
            );
        }
        if libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv_fds(s: &UnixStream) -> io::Result<(u8, Vec<OwnedFd>)> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = vec![0u64; cmsg_space().div_ceil(8)];
    let mut fds = Vec::new();
    // SAFETY: as in `send_fds`; the kernel fills at most the control
    // buffer, and every descriptor it passed is taken into an OwnedFd.
    let (n, flags) = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = (cbuf.len() * 8) as _;
        let n = libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for k in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(k).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        (n, msg.msg_flags)
    };
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the socket",
        ));
    }
    if flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors were truncated"));
    }
    Ok((byte[0], fds))
}

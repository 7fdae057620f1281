//! A tiny forked process that outlives the launcher by a moment, to kill
//! the ranks' process groups if the launcher dies without cleaning up
//! (SIGKILL, OOM killer, crash).
//!
//! PR_SET_PDEATHSIG already kills each rank's own process when the launcher
//! dies, but not what the rank started (a shell's children, worker
//! processes); those live in the rank's process group, and only someone
//! still alive can kill a group. The sentinel learns each group through a
//! pipe whose only write end is in the launcher: the kernel closes it when
//! the launcher dies, however it dies, and the sentinel wakes on EOF.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Groups the sentinel can remember; it allocates nothing after fork.
const MAX_GROUPS: usize = 4096;

/// Message meaning "the launcher cleaned up itself; exit quietly".
const DISMISS: i32 = 0;

pub(crate) struct Sentinel {
    pid: libc::pid_t,
    tx: Option<OwnedFd>,
}

impl Sentinel {
    /// Forks the sentinel. Call it before starting any rank, so the sentinel
    /// holds none of the ranks' pipes, and with the launcher's signals
    /// blocked, so a Ctrl-C meant for the job cannot kill it.
    pub(crate) fn start() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds are fresh and owned here.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child only makes async-signal-safe system calls and
        // never returns (see `watch_groups`), so forking a possibly
        // multi-threaded process is sound.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            watch_groups(rx.as_raw_fd());
        }
        drop(rx);
        Ok(Sentinel { pid, tx: Some(tx) })
    }

    /// Adds a rank's process group to those killed if the launcher dies.
    pub(crate) fn watch(&self, pgid: libc::pid_t) {
        self.send(pgid);
    }

    fn send(&self, value: i32) {
        if let Some(tx) = &self.tx {
            let bytes = value.to_ne_bytes();
            // A lost sentinel only loses the extra safety; the job goes on.
            // SAFETY: writes 4 bytes from a live buffer; pipe writes this
            // small are atomic.
            let _ = unsafe { libc::write(tx.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.send(DISMISS);
        self.tx = None;
        let mut status = 0;
        // SAFETY: reaps our own child.
        unsafe {
            while libc::waitpid(self.pid, &mut status, 0) < 0
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
        }
    }
}

/// The sentinel's whole life, in the forked child.
fn watch_groups(rx: RawFd) -> ! {
    let mut groups = [0 as libc::pid_t; MAX_GROUPS];
    let mut count = 0;
    // SAFETY: only async-signal-safe calls on plain integers and a stack
    // array from here to _exit.
    unsafe {
        // Keep nothing of the launcher's open: holding its stdout would make
        // a reader of the launcher's output wait for us.
        let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for fd in 0..3 {
            if devnull >= 0 && fd != rx {
                libc::dup2(devnull, fd);
            }
        }
        // This also closes the fork's copy of the write end: only the
        // launcher's may stay open, or EOF never comes.
        close_from_3_except(rx);
        // Out of the launcher's group: terminal signals are for the job.
        libc::setpgid(0, 0);
        loop {
            let mut buf = [0u8; 4];
            let n = libc::read(rx, buf.as_mut_ptr().cast(), 4);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n == 4 {
                let value = i32::from_ne_bytes(buf);
                if value == DISMISS {
                    libc::_exit(0);
                }
                if count < MAX_GROUPS {
                    groups[count] = value;
                    count += 1;
                }
                continue;
            }
            // EOF or error: the launcher is gone.
            for &pgid in &groups[..count] {
                libc::kill(-pgid, libc::SIGKILL);
            }
            libc::_exit(0);
        }
    }
}

/// Closes every fd from 3 on except `keep`.
unsafe fn close_from_3_except(keep: RawFd) {
    let keep = keep as libc::c_uint;
    // SAFETY: close_range only closes descriptors.
    unsafe {
        if keep > 3 {
            libc::close_range(3, keep - 1, 0);
        }
        libc::close_range(keep.max(2) + 1, libc::c_uint::MAX, 0);
    }
}

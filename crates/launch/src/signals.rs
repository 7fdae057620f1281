//! Signals as readable events: the launcher blocks them and reads a
//! signalfd from its poll loop, so it sleeps in the kernel between events
//! instead of waking up to check flags.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Signals the launcher acts on. SIGPIPE is caught only so a rank that closes
/// its stdin turns into EPIPE on our write instead of killing the launcher.
const HANDLED: [i32; 5] = [
    libc::SIGCHLD,
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGPIPE,
];

/// While alive, the calling thread receives [`HANDLED`] only through
/// [`SignalFd::read`]; dropping it restores the previous signal mask.
///
/// Children started with `std::process::Command` get an empty mask back.
pub(crate) struct SignalFd {
    fd: OwnedFd,
    previous: libc::sigset_t,
    /// SIGINT's disposition on entry, when it was "ignore".
    ignored_int: Option<libc::sigaction>,
}

impl SignalFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain libc calls on stack-owned sigset_t values.
        unsafe {
            let mut set = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(set.as_mut_ptr());
            let mut set = set.assume_init();
            for sig in HANDLED {
                libc::sigaddset(&mut set, sig);
            }
            let mut previous = MaybeUninit::<libc::sigset_t>::uninit();
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, previous.as_mut_ptr());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            let previous = previous.assume_init();
            // An ignored signal is discarded before it can be queued, so a
            // launcher started as a shell's background job (SIGINT ignored)
            // would never see the SIGINT it is meant to forward. Blocked
            // first, so the default action cannot fire in between.
            let mut old = MaybeUninit::<libc::sigaction>::zeroed().assume_init();
            libc::sigaction(libc::SIGINT, std::ptr::null(), &mut old);
            let ignored_int = if old.sa_sigaction == libc::SIG_IGN {
                let mut dfl = MaybeUninit::<libc::sigaction>::zeroed().assume_init();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGINT, &dfl, std::ptr::null_mut());
                Some(old)
            } else {
                None
            };
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                let err = io::Error::last_os_error();
                libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
                return Err(err);
            }
            Ok(SignalFd {
                fd: OwnedFd::from_raw_fd(fd),
                previous,
                ignored_int,
            })
        }
    }

    /// Every signal that arrived since the last call (possibly none).
    pub(crate) fn read(&self) -> io::Result<Vec<i32>> {
        let mut signals = Vec::new();
        loop {
            let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: the buffer is exactly one signalfd_siginfo.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => return Ok(signals),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(err),
                }
            }
            if n as usize != size {
                return Ok(signals);
            }
            // SAFETY: the kernel filled all `size` bytes.
            let info = unsafe { info.assume_init() };
            signals.push(info.ssi_signo as i32);
        }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for SignalFd {
    fn drop(&mut self) {
        // Consume what is pending so unblocking cannot deliver a stale SIGINT
        // (default action: die) after the job is already over.
        let _ = self.read();
        // SAFETY: restores the disposition and mask saved in `new`.
        unsafe {
            if let Some(old) = &self.ignored_int {
                libc::sigaction(libc::SIGINT, old, std::ptr::null_mut());
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut());
        }
    }
}

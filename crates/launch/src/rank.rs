//! One started rank as the supervisor sees it: its process, its output
//! pipes turned into prefixed lines, and the feed of its stdin.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Child;

use crate::LaunchError;
use crate::exit::RankExit;
use crate::output::LinePrefixer;
use crate::spawn::{RankProcess, signal_group, spawn_rank};
use crate::stdin::{FeedState, StdinFeed};

const READ_CHUNK: usize = 64 * 1024;

/// Reads per pipe when draining at the end: a leftover grandchild may write
/// forever, so take only what a rank could reasonably have left behind.
const DRAIN_READS: usize = 64;

pub(crate) struct Rank {
    pub(crate) rank: usize,
    pub(crate) host: Option<String>,
    /// Also the id of its process group.
    pub(crate) pid: libc::pid_t,
    pub(crate) stdin: Option<StdinFeed>,
    pub(crate) stdout: Option<Stream>,
    pub(crate) stderr: Option<Stream>,
    pub(crate) exit: Option<RankExit>,
    child: Child,
}

pub(crate) struct Stream {
    pub(crate) fd: OwnedFd,
    lines: LinePrefixer,
    to_stderr: bool,
}

impl Rank {
    pub(crate) fn start(mut process: RankProcess) -> Result<Self, LaunchError> {
        let spawned = spawn_rank(&mut process)?;
        let pid = spawned.child.id() as libc::pid_t;
        let mut child = spawned.child;
        let stdin = match spawned.stdin {
            Some(pipe) => match StdinFeed::new(pipe, &process.stdin) {
                Ok(feed) => Some(feed),
                Err(cause) => {
                    signal_group(pid, libc::SIGKILL);
                    let _ = child.wait();
                    return Err(LaunchError::System {
                        what: "preparing a rank's stdin",
                        cause,
                    });
                }
            },
            None => None,
        };
        let prefix = process.prefix();
        let mut rank = Rank {
            rank: process.rank,
            host: process.host,
            pid,
            stdin,
            stdout: Some(Stream::new(spawned.stdout, prefix.clone(), false)),
            stderr: Some(Stream::new(spawned.stderr, prefix, true)),
            exit: None,
            child,
        };
        rank.flush_stdin();
        Ok(rank)
    }

    pub(crate) fn running(&self) -> bool {
        self.exit.is_none()
    }

    /// Signals the rank's process group while it runs (never a reaped pid,
    /// which the system may have given to someone else).
    pub(crate) fn signal(&self, sig: i32) {
        if self.running() {
            signal_group(self.pid, sig);
        }
    }

    /// Its exit, the first time it is seen.
    pub(crate) fn try_reap(&mut self) -> Option<RankExit> {
        if !self.running() {
            return None;
        }
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return None,
            // ECHILD: someone else in this process reaped it and its status
            // is lost; count it as ended so the job can finish.
            Err(_) => std::process::ExitStatus::default(),
        };
        let exit = RankExit::from_status(status);
        self.exit = Some(exit);
        self.stdin = None;
        Some(exit)
    }

    /// Kills and reaps it, when the job cannot start whole.
    pub(crate) fn kill_now(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    pub(crate) fn flush_stdin(&mut self) {
        if let Some(feed) = &mut self.stdin
            && let FeedState::Done = feed.flush()
        {
            self.stdin = None;
        }
    }

    /// Passes on what one output pipe has; `drain` keeps reading to the end
    /// of what is buffered (once the rank is gone).
    pub(crate) fn read_output(&mut self, is_err: bool, drain: bool) {
        let slot = if is_err {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        let Some(stream) = slot else { return };
        if stream.read(drain) {
            *slot = None;
        }
    }
}

impl Stream {
    fn new(fd: OwnedFd, prefix: String, to_stderr: bool) -> Self {
        Stream {
            fd,
            lines: LinePrefixer::new(prefix),
            to_stderr,
        }
    }

    /// Reads and writes out whole lines; true once the pipe has ended.
    fn read(&mut self, drain: bool) -> bool {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut out = Vec::new();
        let mut reads = 0;
        let ended = loop {
            // SAFETY: reads into a live buffer from our non-blocking pipe.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                self.lines.push(&buf[..n as usize], &mut out);
                reads += 1;
                if drain && reads < DRAIN_READS {
                    continue;
                }
                break false;
            }
            if n == 0 {
                break true;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => break drain,
                _ => break true,
            }
        };
        if ended {
            self.lines.finish(&mut out);
        }
        write_out(&out, self.to_stderr);
        ended
    }
}

/// One write of whole lines, so a line is never split between writes.
fn write_out(bytes: &[u8], to_stderr: bool) {
    if bytes.is_empty() {
        return;
    }
    // Nobody left to read our output (e.g. piped into `head`): the ranks
    // still run to the end, their output is dropped.
    let _ = if to_stderr {
        let mut err = io::stderr().lock();
        err.write_all(bytes).and_then(|_| err.flush())
    } else {
        let mut out = io::stdout().lock();
        out.write_all(bytes).and_then(|_| out.flush())
    };
}

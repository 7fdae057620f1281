//! What a rank's stdin carries, and the queue that feeds it without ever
//! blocking the launcher.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// How a rank's stdin is fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdinPlan {
    /// `/dev/null`.
    Null,
    /// The launcher's own stdin, byte for byte; closed at its EOF.
    Forward,
    /// A framed control stream (see [`frame`]) that starts with `preamble`;
    /// the launcher's stdin goes in data frames when `forward` is set. The
    /// stream stays open after the preamble: a remote bootstrap reads its
    /// end as "the launcher is still there".
    Framed { preamble: Vec<u8>, forward: bool },
}

impl StdinPlan {
    pub(crate) fn forwards(&self) -> bool {
        matches!(
            self,
            StdinPlan::Forward | StdinPlan::Framed { forward: true, .. }
        )
    }
}

/// The framing of [`StdinPlan::Framed`], one header line per frame:
/// `D <n>\n` then n bytes of stdin data, `E\n` for stdin's end, `S <NAME>\n`
/// to deliver a signal such as `INT`.
pub mod frame {
    pub fn data(bytes: &[u8]) -> Vec<u8> {
        let mut out = format!("D {}\n", bytes.len()).into_bytes();
        out.extend_from_slice(bytes);
        out
    }

    pub fn eof() -> Vec<u8> {
        b"E\n".to_vec()
    }

    /// `name` without the `SIG` prefix, e.g. `INT`.
    pub fn signal(name: &str) -> Vec<u8> {
        format!("S {name}\n").into_bytes()
    }
}

/// A non-blocking pipe to one rank's stdin with the bytes still to write.
pub(crate) struct StdinFeed {
    pipe: OwnedFd,
    queue: Vec<u8>,
    written: usize,
    framed: bool,
    forward: bool,
    close_when_drained: bool,
}

pub(crate) enum FeedState {
    Open,
    /// The rank closed its end or everything was written and closing was
    /// asked for: drop the feed.
    Done,
}

impl StdinFeed {
    pub(crate) fn new(pipe: OwnedFd, plan: &StdinPlan) -> io::Result<Self> {
        set_nonblocking(&pipe)?;
        let (queue, framed) = match plan {
            StdinPlan::Framed { preamble, .. } => (preamble.clone(), true),
            _ => (Vec::new(), false),
        };
        Ok(StdinFeed {
            pipe,
            queue,
            written: 0,
            framed,
            forward: plan.forwards(),
            close_when_drained: false,
        })
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        self.pipe.as_raw_fd()
    }

    pub(crate) fn forwards(&self) -> bool {
        self.forward
    }

    pub(crate) fn framed(&self) -> bool {
        self.framed
    }

    pub(crate) fn has_pending(&self) -> bool {
        self.written < self.queue.len()
    }

    /// Queues a chunk of the launcher's stdin.
    pub(crate) fn push_stdin(&mut self, data: &[u8]) {
        if self.framed {
            self.push_raw(&frame::data(data));
        } else {
            self.push_raw(data);
        }
    }

    /// The launcher's stdin ended: tell the rank.
    pub(crate) fn stdin_ended(&mut self) {
        if self.framed {
            self.push_raw(&frame::eof());
        } else {
            self.close_when_drained = true;
        }
    }

    pub(crate) fn push_raw(&mut self, data: &[u8]) {
        if self.written == self.queue.len() {
            self.queue.clear();
            self.written = 0;
        }
        self.queue.extend_from_slice(data);
    }

    /// Writes what the pipe takes now.
    pub(crate) fn flush(&mut self) -> FeedState {
        while self.has_pending() {
            let rest = &self.queue[self.written..];
            // SAFETY: writes from a live slice to our own fd.
            let n = unsafe { libc::write(self.pipe.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return FeedState::Open,
                    // EPIPE: the rank closed stdin or exited; nothing to feed.
                    _ => return FeedState::Done,
                }
            }
            self.written += n as usize;
        }
        if self.close_when_drained {
            FeedState::Done
        } else {
            FeedState::Open
        }
    }
}

pub(crate) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl flag calls on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_length() {
        assert_eq!(frame::data(b"a\nb"), b"D 3\na\nb");
        assert_eq!(frame::eof(), b"E\n");
        assert_eq!(frame::signal("INT"), b"S INT\n");
    }

    #[test]
    fn only_forwarding_plans_take_the_launchers_stdin() {
        assert!(StdinPlan::Forward.forwards());
        assert!(!StdinPlan::Null.forwards());
        let framed = |forward| StdinPlan::Framed {
            preamble: vec![],
            forward,
        };
        assert!(framed(true).forwards());
        assert!(!framed(false).forwards());
    }
}

//! How a job ended: what the launcher reports and exits with.

use std::fmt;

use crate::exit::{RankExit, signal_name};

/// The first rank that failed: the reason the job ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankFailure {
    pub rank: usize,
    pub host: Option<String>,
    pub exit: RankExit,
}

impl fmt::Display for RankFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {}", self.rank)?;
        match &self.host {
            Some(host) => write!(f, " ({host}) {}", RemoteExit(self.exit)),
            None => write!(f, " {}", self.exit),
        }
    }
}

/// A remote rank's end as its local ssh client reports it: ssh exits 255
/// when it fails itself, the remote bootstrap turns a signal death into
/// status 128 + N as a shell does, and a signal that ends the ssh client
/// here cut the rank off rather than killed it.
struct RemoteExit(RankExit);

/// ssh's own failure status (unreachable, login refused, connection lost).
const SSH_FAILED: i32 = 255;

impl fmt::Display for RemoteExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            RankExit::Status(SSH_FAILED) => write!(
                f,
                "lost its ssh session: ssh exited with status 255 (host unreachable, \
                 login refused or connection dropped; its ssh message is above)"
            ),
            RankExit::Status(code) if code > 128 => match signal_name(code - 128) {
                Some(name) => write!(
                    f,
                    "was killed by signal {} ({name}) on its host (status {code})",
                    code - 128
                ),
                None => write!(f, "exited with status {code}"),
            },
            RankExit::Status(code) => write!(f, "exited with status {code}"),
            RankExit::Signal(sig) => {
                write!(f, "lost its ssh session: the ssh client here was ")?;
                match signal_name(sig) {
                    Some(name) => write!(f, "killed by signal {sig} ({name})"),
                    None => write!(f, "killed by signal {sig}"),
                }
            }
        }
    }
}

/// How a job ended once every rank is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    /// `None` when every rank exited with status 0.
    pub failure: Option<RankFailure>,
    /// The last signal the launcher received and passed on, if any.
    pub signal: Option<i32>,
}

impl JobReport {
    /// What the launcher should exit with: the failed rank's status (128 +
    /// signal when a signal killed it), or 0.
    pub fn exit_code(&self) -> i32 {
        self.failure.as_ref().map_or(0, |f| f.exit.exit_code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_rank_host_and_cause() {
        let failure = RankFailure {
            rank: 2,
            host: Some("m2".into()),
            exit: RankExit::Status(3),
        };
        assert_eq!(failure.to_string(), "rank 2 (m2) exited with status 3");
        let report = JobReport {
            failure: Some(failure),
            signal: None,
        };
        assert_eq!(report.exit_code(), 3);
    }

    #[test]
    fn remote_ends_say_what_ssh_and_the_bootstrap_meant() {
        let remote = |exit| {
            RankFailure {
                rank: 1,
                host: Some("h1".into()),
                exit,
            }
            .to_string()
        };
        assert_eq!(
            remote(RankExit::Status(137)),
            "rank 1 (h1) was killed by signal 9 (SIGKILL) on its host (status 137)"
        );
        assert!(
            remote(RankExit::Status(255))
                .starts_with("rank 1 (h1) lost its ssh session: ssh exited with status 255"),
        );
        assert_eq!(
            remote(RankExit::Signal(9)),
            "rank 1 (h1) lost its ssh session: the ssh client here was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            remote(RankExit::Status(200)),
            "rank 1 (h1) exited with status 200"
        );
        let local = RankFailure {
            rank: 1,
            host: None,
            exit: RankExit::Status(137),
        };
        assert_eq!(local.to_string(), "rank 1 exited with status 137");
    }

    #[test]
    fn clean_job_exits_zero_even_after_a_signal() {
        let report = JobReport {
            failure: None,
            signal: Some(libc::SIGINT),
        };
        assert_eq!(report.exit_code(), 0);
    }
}

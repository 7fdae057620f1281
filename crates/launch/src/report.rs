//! How a job ended: what the launcher reports and exits with.

use std::fmt;

use crate::exit::RankExit;

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
        if let Some(host) = &self.host {
            write!(f, " ({host})")?;
        }
        write!(f, " {}", self.exit)
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
    fn clean_job_exits_zero_even_after_a_signal() {
        let report = JobReport {
            failure: None,
            signal: Some(libc::SIGINT),
        };
        assert_eq!(report.exit_code(), 0);
    }
}

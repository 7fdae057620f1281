//! The one error type of the crate: every variant names what went wrong
//! (the rank, the variable, the address) so a user can act on it.

use std::sync::Arc;

/// Everything that can go wrong in huddle-comm.
///
/// `Clone` because one failure (a lost peer) is reported to every pending
/// and later operation of the process.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommError {
    /// An environment variable is set to something unusable.
    #[error("environment variable {var}: {reason}")]
    Env { var: &'static str, reason: String },
    /// Some of the launcher's variables are set and others are not.
    #[error(
        "incomplete huddle environment: {set} set but {missing} missing (start ranks with `huddle launch`, or set all of them)"
    )]
    PartialEnv { set: String, missing: String },
    /// `init_strict` found none of the launcher's variables.
    #[error("not started by a huddle launcher: HUDDLE_RANK and friends are not set")]
    NotLaunched,
    /// An explicit setup (builder) is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A socket operation failed.
    #[error("rank {rank}: {context}: {source}")]
    Io {
        rank: usize,
        context: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The coordinator (rank 0) could not be reached, or not everyone joined.
    #[error("rank {rank}: {what} within the join timeout of {secs} s{detail}")]
    JoinTimeout {
        rank: usize,
        what: String,
        secs: u64,
        detail: String,
    },
    /// A connection could not prove it knows the job token, or we could not.
    #[error("rank {rank}: authentication with {peer} failed: {reason}")]
    Auth {
        rank: usize,
        peer: String,
        reason: String,
    },
    /// Ranks disagree about the job (duplicate rank, world size, version).
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    /// A peer exited, crashed, closed its group too early or stopped answering.
    #[error("rank {rank} is lost: {reason}")]
    PeerLost { rank: usize, reason: String },
    /// Two ranks called different operations at the same point of a group.
    #[error(
        "mismatched calls in group {group:#x}: rank {local} called {local_op}, but rank {remote} called {remote_op}"
    )]
    Mismatch {
        group: u64,
        local: usize,
        local_op: String,
        remote: usize,
        remote_op: String,
    },
    /// Another rank failed and told everyone before stopping.
    #[error("rank {rank} aborted the job: {reason}")]
    Aborted { rank: usize, reason: String },
    /// A call's arguments cannot work (buffer lengths, rank out of range).
    #[error("{0}")]
    InvalidArgument(String),
    /// The group's engine is gone (the process is shutting down).
    #[error("the communication engine has shut down")]
    Shutdown,
}

pub type Result<T, E = CommError> = std::result::Result<T, E>;

impl CommError {
    pub(crate) fn io(rank: usize, context: impl Into<String>, source: std::io::Error) -> Self {
        CommError::Io {
            rank,
            context: context.into(),
            source: Arc::new(source),
        }
    }
}

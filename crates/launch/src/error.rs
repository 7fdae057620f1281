use std::io;

use crate::hostfile::HostfileError;

// The io::Error is part of each message rather than a `source`, so it
// shows once whether a caller prints the chain or only the top.

/// Everything that can stop a job from starting or being supervised.
///
/// A rank that fails is not an error here: it is part of the job's
/// [`JobReport`](crate::JobReport).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no command given to run (put it after `--`)")]
    EmptyCommand,
    #[error("a job needs at least one rank")]
    NoRanks,
    #[error("the hostfile lists no hosts")]
    NoHosts,
    #[error("invalid environment assignment {given:?}: {reason}")]
    InvalidEnv { given: String, reason: &'static str },
    #[error("cannot start `{program}` for rank {rank}: {cause}")]
    Spawn {
        rank: usize,
        program: String,
        cause: io::Error,
    },
    #[error("cannot find a free TCP port on {host}: {cause}")]
    NoFreePort { host: String, cause: io::Error },
    #[error(transparent)]
    Hostfile(#[from] HostfileError),
    #[error("{what}: {cause}")]
    System {
        what: &'static str,
        cause: io::Error,
    },
}

impl LaunchError {
    pub(crate) fn system(what: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |cause| LaunchError::System { what, cause }
    }
}

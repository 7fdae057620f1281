//! huddle-launch: starts the ranks of a job, on this machine or on the hosts
//! of a hostfile, with the environment contract that huddle-comm reads.
//!
//! The launcher must stay nearly idle while ranks run, never leave a process
//! behind, and never exit 0 when a rank failed.
//!
//! # Environment contract
//!
//! Every rank starts with these variables set (and, before them, the
//! hostfile's `envs` and the user's `--env` pairs, which may not use these
//! names):
//!
//! | variable             | value                                                     |
//! |----------------------|-----------------------------------------------------------|
//! | `HUDDLE_RANK`        | this rank, `0..world_size`                                 |
//! | `HUDDLE_WORLD_SIZE`  | number of ranks in the job                                |
//! | `HUDDLE_LOCAL_RANK`  | this rank's index among the ranks on its host             |
//! | `HUDDLE_LOCAL_SIZE`  | number of ranks on its host                               |
//! | `HUDDLE_COORDINATOR` | `host:port` where rank 0 listens (IPv6 in brackets)       |
//! | `HUDDLE_JOB_TOKEN`   | 256 random bits as hex, fresh per job; peers prove it     |
//! | `HUDDLE_HOSTFILE`    | path of the job's hostfile, only when there is one        |
//!
//! The token never appears in a process's arguments: locally it is only in
//! the environment, and over ssh it travels through the session's stdin.
//!
//! # Process lifetime
//!
//! Each rank runs in its own process group, with PR_SET_PDEATHSIG so it dies
//! with the launcher; a forked sentinel kills the groups (grandchildren
//! included) if the launcher itself is killed. When one rank fails, the
//! others get SIGTERM, then SIGKILL after a grace period. SIGINT, SIGTERM and
//! SIGHUP sent to the launcher are passed to every rank.
//!
//! # Over ssh
//!
//! [`SshJob`] starts each rank through the system's `ssh` (BatchMode, no
//! tty) as `exec sh -c '<bootstrap>' huddle-rank PROGRAM ARGS...`, every
//! argument shell-quoted. The environment, token and working directory go
//! through the session's stdin, which then carries framed stdin data and
//! signals ([`frame`]); EOF there (launcher or connection gone) stops the
//! remote session's whole process group. Stopping a remote rank is stopping
//! its local ssh client. A remote rank's end is read as ssh reports it:
//! status 255 is ssh's own failure (host unreachable, login refused,
//! connection lost), 128 + N a signal N on its host, and a signal that ends
//! the ssh client here a session lost at this end ([`RankFailure`]'s text).
//!
//! Linux only: it relies on signalfd, prctl and close_range.

mod env;
mod error;
mod exit;
mod hostfile;
mod local;
mod output;
pub mod probe;
mod quote;
mod rank;
mod report;
mod sentinel;
mod signals;
mod spawn;
mod ssh;
mod stdin;
mod supervise;

pub use env::{
    ADDRS, CONTRACT, COORDINATOR, EnvPair, HOSTFILE, JOB_TOKEN, JobEnv, JobToken, LOCAL_RANK,
    LOCAL_SIZE, Placement, RANK, WORLD_SIZE,
};
pub use error::LaunchError;
pub use exit::{RankExit, signal_name};
pub use hostfile::{Host, Hostfile, HostfileError, RdmaEntry};
pub use local::{LocalJob, free_port};
pub use quote::{quote, quote_words};
pub use report::{JobReport, RankFailure};
pub use spawn::RankProcess;
pub use ssh::{SshJob, SshRank, describe};
pub use stdin::{StdinPlan, frame};
pub use supervise::{SuperviseOptions, supervise};

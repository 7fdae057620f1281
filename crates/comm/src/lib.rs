//! huddle-comm: collective communication between the ranks of a job.
//!
//! A [`Group`] of ranks exchanges data with all_sum (max, min, prod),
//! all_gather, reduce_scatter, broadcast, send/recv and barrier, over f32,
//! f16, bf16, f64, i32, i64 and u8. Start one with [`init`] (from the
//! launcher's environment; a single-rank group when there is none),
//! [`init_strict`], or [`GroupBuilder`].
//!
//! How it is put together (top to bottom):
//! - `group`: the public API; argument checks, sequence numbers, choice of
//!   algorithm (rank 0 measures the ring/mesh switch-over size at init).
//! - `algo`: ring and mesh algorithms. They post sends and receives on an
//!   `engine::Op` and never touch a socket. Every algorithm folds an
//!   element's contributions in one canonical order (`algo::layout`), so
//!   results are bit-identical across ranks, reruns and algorithms.
//! - `engine`: posted receives, early messages, completions, failures.
//! - `io_thread` + `transport`: one poll-driven thread per process moves
//!   framed bytes over TCP (several striped connections per peer),
//!   heartbeats every peer and reports a silent or vanished one by rank.
//!   Ranks on one host exchange data frames through shared-memory rings
//!   instead (`transport::shm`), TCP staying their control channel.
//! - `shm_wait`: a caller waiting on a shared-memory transfer moves the
//!   bytes itself (bounded spin, then sleep on eventfds); `contention`
//!   tells it whether its thread has a core to itself, where it may spin
//!   longer.
//! - `progress`: a caller blocked on a small receive reads its peers'
//!   sockets itself (one wake-up per message instead of two); small sends
//!   are written by the caller too, when the I/O thread has nothing queued.
//! - `bootstrap` + `auth`: joining through rank 0, token handshake on every
//!   connection.
//!
//! This crate must never depend on an ML library, never spin a core while
//! waiting beyond a bounded spin (and none on a core another thread needs),
//! and never hang on a dead peer.

mod algo;
mod auth;
mod bootstrap;
mod calibrate;
mod codec;
mod config;
mod contention;
mod dtype;
mod engine;
mod env;
mod error;
mod group;
mod io_thread;
mod pending;
mod progress;
mod shm_wait;
mod transport;
mod wire;

pub use config::{
    Algo, Config, DEFAULT_PIECE_BYTES, GroupBuilder, MAX_WORLD_SIZE, parse_token_hex,
};
pub use dtype::{DType, Element, ReduceOp};
pub use env::{config_from, config_from_env};
pub use error::{CommError, Result};
pub use group::Group;
pub use half::{bf16, f16};
pub use pending::Pending;
pub use transport::Transport;

/// The group of the whole job, from the launcher's environment; a
/// single-rank group when the environment says nothing. A partial
/// environment is an error, never a silent single-rank run.
pub fn init() -> Result<Group> {
    match config_from_env()? {
        Some(cfg) => Group::connect(cfg),
        None => Ok(Group::single()),
    }
}

/// As [`init`], but an error when not started by a launcher.
pub fn init_strict() -> Result<Group> {
    match config_from_env()? {
        Some(cfg) => Group::connect(cfg),
        None => Err(CommError::NotLaunched),
    }
}

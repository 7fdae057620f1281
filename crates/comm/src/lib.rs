//! huddle-comm: collective communication between the ranks of a job.
//!
//! A [`Group`] of ranks exchanges data with all_sum, all_gather,
//! reduce_scatter, broadcast, send/recv and barrier, over TCP (and shared
//! memory for ranks on one host). Transports only move bytes between two
//! ranks; algorithms (ring, mesh) decide which bytes move when.
//!
//! This crate must never depend on an ML library, never spin a core while
//! waiting, and never hang on a dead peer.

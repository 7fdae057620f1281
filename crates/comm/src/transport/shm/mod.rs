//! Shared memory between ranks on one host: per pair an anonymous segment
//! with one single-producer/single-consumer byte ring per direction,
//! carrying the same frames as TCP. The pair's TCP connections stay as the
//! control channel (heartbeats, Abort, Bye), so a dead or stopped peer is
//! seen exactly as over TCP.

pub(crate) mod link;
pub(crate) mod ring;
pub(crate) mod segment;
pub(crate) mod setup;
pub(crate) mod stores;

pub(crate) use link::ShmLink;

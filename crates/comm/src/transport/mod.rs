//! Transports move bytes between two ranks and know nothing of algorithms:
//! they carry frames (`wire::Header` + payload) and hand each incoming
//! header to a [`FrameSink`], which decides where the payload goes.
//!
//! TCP connects every pair; pairs on one host also get a shared-memory
//! link (`shm`) that carries their data frames, while TCP stays their
//! control channel. Algorithms see no difference.

pub(crate) mod inbound;
pub(crate) mod shm;
pub(crate) mod tcp;

use crate::wire::Header;

/// How two ranks exchange data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    /// Shared memory (ranks on one host); TCP still carries heartbeats.
    Shm,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Shm => "shm",
        })
    }
}

/// Raw destination memory owned by a posted receive. The engine guarantees
/// it stays valid until the receive completes or is purged.
#[derive(Clone, Copy)]
pub(crate) struct RawMut {
    pub ptr: *mut u8,
    pub len: usize,
}
// SAFETY: the pointer is only dereferenced by the I/O thread while the
// owning operation keeps the memory alive (see `engine::Op`).
unsafe impl Send for RawMut {}

/// Raw source memory of a send that was not copied.
#[derive(Clone, Copy)]
pub(crate) struct RawConst {
    pub ptr: *const u8,
    pub len: usize,
}
// SAFETY: as for RawMut.
unsafe impl Send for RawConst {}

/// Where an incoming payload is written.
pub(crate) enum Dest {
    /// Straight into the memory of a posted receive.
    Posted { mem: RawMut, ticket: u64 },
    /// Folded into the memory of a posted receive (shared memory only).
    Fold {
        mem: RawMut,
        ticket: u64,
        fold: crate::dtype::Fold,
    },
    /// Nobody asked yet: kept until someone does.
    Owned(Vec<u8>),
    /// Read and dropped (heartbeats, frames after a failure).
    Discard,
}

/// The bytes of an outgoing frame.
pub(crate) enum Payload {
    Empty,
    Owned(Vec<u8>),
    Borrowed(RawConst),
}

impl Payload {
    /// `data` as a frame's payload: copied when `inline` (small frames the
    /// caller may reuse at once), else borrowed until the frame is sent.
    pub fn of(data: &[u8], inline: bool) -> Payload {
        if data.is_empty() {
            Payload::Empty
        } else if inline {
            Payload::Owned(data.to_vec())
        } else {
            Payload::Borrowed(RawConst {
                ptr: data.as_ptr(),
                len: data.len(),
            })
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Payload::Empty => 0,
            Payload::Owned(v) => v.len(),
            Payload::Borrowed(r) => r.len,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::Empty => &[],
            Payload::Owned(v) => v,
            // SAFETY: the owner keeps borrowed memory alive until the frame's
            // ticket completes or the engine purges it.
            Payload::Borrowed(r) => unsafe { std::slice::from_raw_parts(r.ptr, r.len) },
        }
    }
}

/// One frame waiting to be written.
pub(crate) struct OutFrame {
    pub peer: usize,
    pub header: [u8; crate::wire::HEADER_LEN],
    pub payload: Payload,
    /// Completed once the last byte is handed to the kernel.
    pub ticket: Option<u64>,
    /// Bytes a caller already wrote itself on the peer's first connection:
    /// the rest must follow on that same connection, before anything else.
    pub written: Option<usize>,
}

/// The receiving side's matching logic, as seen by a transport.
pub(crate) trait FrameSink {
    /// `folds`: the transport can fold a payload into its destination
    /// as it arrives (`Dest::Fold`).
    fn on_header(&mut self, peer: usize, header: &Header, folds: bool) -> Dest;
    fn on_payload(&mut self, peer: usize, header: Header, dest: Dest);
    /// A whole frame that is already in memory (the common small case):
    /// one call instead of two.
    fn on_frame(&mut self, peer: usize, header: &Header, payload: &[u8]);
}

//! The frame every transport carries: a fixed header naming the operation
//! the bytes belong to (group, sequence number, op, dtype, count), so a
//! receiver can match them to its own call and refuse a mismatch.

use crate::dtype::{DType, ReduceOp};

pub(crate) const HEADER_LEN: usize = 48;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum FrameKind {
    Data = 1,
    Heartbeat = 2,
    /// The sender has flushed everything and is closing its group.
    Bye = 3,
    /// The sender failed; the payload says why (see `engine::abort`).
    Abort = 4,
}

/// The collective (or point-to-point) operation a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum OpKind {
    AllReduce = 1,
    AllGather = 2,
    ReduceScatter = 3,
    Broadcast = 4,
    SendRecv = 5,
    Barrier = 6,
}

impl OpKind {
    fn from_u8(v: u8) -> Option<OpKind> {
        Some(match v {
            1 => OpKind::AllReduce,
            2 => OpKind::AllGather,
            3 => OpKind::ReduceScatter,
            4 => OpKind::Broadcast,
            5 => OpKind::SendRecv,
            6 => OpKind::Barrier,
            _ => return None,
        })
    }
}

/// What both sides of a message must agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpDesc {
    pub kind: OpKind,
    pub reduce: Option<ReduceOp>,
    pub dtype: DType,
    /// Total elements of the call as the sender sees it.
    pub count: u64,
    /// Broadcast root (group rank); 0 otherwise.
    pub arg: u32,
}

impl std::fmt::Display for OpDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match (self.kind, self.reduce) {
            (OpKind::AllReduce, Some(r)) => format!("all_{}", r.name()),
            (OpKind::ReduceScatter, Some(r)) => format!("reduce_scatter({})", r.name()),
            (OpKind::AllGather, _) => "all_gather".into(),
            (OpKind::Broadcast, _) => format!("broadcast(root {})", self.arg),
            (OpKind::SendRecv, _) => "send/recv".into(),
            (OpKind::Barrier, _) => "barrier".into(),
            (k, _) => format!("{k:?}"),
        };
        write!(f, "{name} of {} x {}", self.count, self.dtype.name())
    }
}

/// Where a message belongs: matched exactly by receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub group: u64,
    pub seq: u64,
    pub tag: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: FrameKind,
    pub desc: OpDesc,
    pub key: Key,
    pub len: u64,
}

impl Header {
    pub(crate) fn control(kind: FrameKind, len: u64) -> Header {
        Header {
            kind,
            desc: OpDesc {
                kind: OpKind::Barrier,
                reduce: None,
                dtype: DType::U8,
                count: 0,
                arg: 0,
            },
            key: Key {
                group: 0,
                seq: 0,
                tag: 0,
            },
            len,
        }
    }

    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.kind as u8;
        b[1] = self.desc.kind as u8;
        b[2] = self.desc.dtype as u8;
        b[3] = self.desc.reduce.map_or(0, |r| r as u8);
        b[4..8].copy_from_slice(&self.desc.arg.to_le_bytes());
        b[8..16].copy_from_slice(&self.key.group.to_le_bytes());
        b[16..24].copy_from_slice(&self.key.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.key.tag.to_le_bytes());
        b[32..40].copy_from_slice(&self.desc.count.to_le_bytes());
        b[40..48].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// `None` for bytes that are not a frame header of this version.
    pub(crate) fn decode(b: &[u8; HEADER_LEN]) -> Option<Header> {
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let kind = match b[0] {
            1 => FrameKind::Data,
            2 => FrameKind::Heartbeat,
            3 => FrameKind::Bye,
            4 => FrameKind::Abort,
            _ => return None,
        };
        let reduce = match b[3] {
            0 => None,
            r => Some(ReduceOp::from_u8(r)?),
        };
        Some(Header {
            kind,
            desc: OpDesc {
                kind: OpKind::from_u8(b[1])?,
                reduce,
                dtype: DType::from_u8(b[2])?,
                count: u64_at(32),
                arg: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            },
            key: Key {
                group: u64_at(8),
                seq: u64_at(16),
                tag: u64_at(24),
            },
            len: u64_at(40),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            kind: FrameKind::Data,
            desc: OpDesc {
                kind: OpKind::ReduceScatter,
                reduce: Some(ReduceOp::Prod),
                dtype: DType::BF16,
                count: 1 << 40,
                arg: 7,
            },
            key: Key {
                group: u64::MAX,
                seq: 3,
                tag: 99,
            },
            len: 12345,
        };
        assert_eq!(Header::decode(&h.encode()), Some(h));
    }

    #[test]
    fn garbage_is_not_a_header() {
        assert_eq!(Header::decode(&[0xff; HEADER_LEN]), None);
    }
}

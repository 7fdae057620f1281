//! Algorithms: which bytes move between which ranks, and when. They only
//! use `engine::Op` (post a send, post a receive, wait), never a socket, so
//! any transport serves them.

pub(crate) mod layout;
pub(crate) mod mesh;
pub(crate) mod p2p;
pub(crate) mod ring;
pub(crate) mod scratch;

use std::ops::Range;

use crate::engine::{Engine, Op};
use crate::error::Result;
use crate::wire::OpDesc;

pub(crate) use scratch::ScratchPool;

/// What an algorithm needs to know about the group it runs in.
pub(crate) struct Ctx<'a> {
    pub engine: &'a Engine,
    pub group: u64,
    pub seq: u64,
    /// This rank's index in the group.
    pub rank: usize,
    /// World rank of each group member.
    pub members: &'a [usize],
    pub piece_bytes: usize,
    pub scratch: &'a ScratchPool,
}

impl Ctx<'_> {
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// World rank of group member `r`.
    pub fn world(&self, r: usize) -> usize {
        self.members[r]
    }

    /// Starts a collective: every other member may send to us.
    pub fn begin(&self, desc: OpDesc) -> Result<Op<'_>> {
        let peers = self
            .members
            .iter()
            .copied()
            .filter(|&w| w != self.members[self.rank])
            .collect();
        self.begin_from(desc, peers)
    }

    /// Starts a call that receives only from `srcs` (world ranks).
    pub fn begin_from(&self, desc: OpDesc, srcs: Vec<usize>) -> Result<Op<'_>> {
        Op::begin(self.engine, self.group, self.seq, desc, srcs)
    }
}

/// A sub-slice of a raw buffer. Algorithms hand disjoint regions of one
/// buffer to the I/O thread and to the reducer at once, so they work from
/// a base pointer rather than from nested borrows.
///
/// # Safety
/// `r` must lie inside the buffer at `base`, and no other live reference
/// may overlap it while the result is used.
pub(crate) unsafe fn region<'x, T>(base: *mut T, r: Range<usize>) -> &'x mut [T] {
    unsafe { std::slice::from_raw_parts_mut(base.add(r.start), r.len()) }
}

//! The ring: bandwidth-optimal collectives, chunked and pipelined.
//!
//! all-reduce = reduce-scatter then all-gather, with the first half of the
//! buffer on the forward ring and the second half on the reverse ring, so
//! both directions of every link carry data. Every piece is forwarded as
//! soon as it arrives and is reduced: while this thread reduces one piece,
//! the I/O thread is already sending the previous one and receiving the
//! next.
//!
//! Step by step, for direction d (next = r+d, prev = r-d), chunk indices mod n:
//! - reduce-scatter step s: send chunk r-d*s, receive chunk r-d*(s+1) and
//!   fold it in front of our own contribution. After n-1 steps, rank r
//!   holds chunk r+d complete (folded in the order c, c+d, c+2d, ...).
//! - all-gather step s: send chunk r+d-d*s, receive chunk r-d*s in place.

use std::ops::Range;

use super::layout::{self, tag, wrap};
use super::{Ctx, region};
use crate::dtype::{
    Element, Fold, ReduceOp, as_bytes, as_bytes_mut, reduce_prefix_into, words_as_mut,
};
use crate::engine::{Op, Ticket};
use crate::error::Result;
use crate::wire::OpDesc;

/// A posted receive and what to do once it lands.
struct Arrival {
    phase: u64,
    step: usize,
    piece: usize,
    range: Range<usize>,
    ticket: Ticket,
    /// Reduced on arrival already (`Op::recv_fold`).
    folded: bool,
}

struct Lane {
    reverse: bool,
    next: usize,
    arrivals: Vec<Arrival>,
}

pub(crate) fn all_reduce<T: Element>(
    cx: &Ctx,
    buf: &mut [T],
    op: ReduceOp,
    desc: OpDesc,
) -> Result<()> {
    let (n, r, len) = (cx.size(), cx.rank, buf.len());
    let pe = layout::piece_elems(cx.piece_bytes, size_of::<T>());
    let mut o = cx.begin(desc)?;
    // Scratch holds what arrives to be reduced; when both neighbours are
    // on this host everything folds straight out of shared memory and no
    // scratch is taken (nor faulted in, for a first large call).
    let folds_all = [-1, 1]
        .iter()
        .all(|&d| o.folds_from(cx.world(wrap(r, d, n))));
    let scratch_len = if folds_all { 0 } else { len };
    let mut scratch = cx.scratch.take(scratch_len * size_of::<T>());
    let tmp: *mut T = words_as_mut::<T>(&mut scratch.words, scratch_len).as_mut_ptr();
    let base: *mut T = buf.as_mut_ptr();
    let mut lanes = Vec::with_capacity(2);
    for (half, d) in layout::halves(len) {
        let chunk = |c: usize| {
            let p = layout::part(half.len(), n, c);
            half.start + p.start..half.start + p.end
        };
        let (prev, next) = (cx.world(wrap(r, -d, n)), cx.world(wrap(r, d, n)));
        let reverse = d < 0;
        let mut lane = Lane {
            reverse,
            next,
            arrivals: Vec::new(),
        };
        let step = |s: usize| d * s as isize;
        // From a peer on this host, reduce-scatter pieces fold straight
        // out of shared memory into our own contribution (the same order
        // as `reduce_prefix_into`), saving a copy through scratch. That
        // region holds only our own data until then: nothing reads it.
        let fold = o.folds_from(prev).then(|| Fold::of::<T>(op));
        for s in 0..n - 1 {
            for (phase, c, mem) in [
                (tag::REDUCE_SCATTER, wrap(r, -step(s + 1), n), tmp),
                (tag::ALL_GATHER, wrap(r, -step(s), n), base),
            ] {
                for (k, pr) in layout::pieces(chunk(c), pe).enumerate() {
                    let t = tag::make(phase, reverse, s, k);
                    let folded = phase == tag::REDUCE_SCATTER && fold.is_some();
                    // SAFETY: `pr` lies in the buffer; the tag makes every
                    // posted region distinct, and `o` waits before returning.
                    let ticket = unsafe {
                        match fold {
                            Some(f) if folded => {
                                o.recv_fold(prev, t, as_bytes_mut(region(base, pr.clone())), f)?
                            }
                            _ => o.recv(prev, t, as_bytes_mut(region(mem, pr.clone())))?,
                        }
                    };
                    lane.arrivals.push(Arrival {
                        phase,
                        step: s,
                        piece: k,
                        range: pr,
                        ticket,
                        folded,
                    });
                }
            }
        }
        // Arrivals are handled in pipeline order: reduce-scatter first.
        lane.arrivals.sort_by_key(|a| (a.phase, a.step, a.piece));
        for (k, pr) in layout::pieces(chunk(r), pe).enumerate() {
            // SAFETY: our own chunk is only read until the ring has passed it.
            unsafe {
                o.send(
                    next,
                    tag::make(tag::REDUCE_SCATTER, reverse, 0, k),
                    as_bytes(region(base, pr)),
                )?
            };
        }
        lanes.push(lane);
    }
    let last = n - 2;
    let mut at = [0usize; 2];
    loop {
        let mut progressed = false;
        for (li, lane) in lanes.iter().enumerate() {
            let Some(a) = lane.arrivals.get(at[li]) else {
                continue;
            };
            at[li] += 1;
            progressed = true;
            o.wait(a.ticket)?;
            // SAFETY: the piece has arrived and nobody else touches it now.
            let mine = unsafe { region(base, a.range.clone()) };
            let forward = if a.phase == tag::REDUCE_SCATTER {
                if !a.folded {
                    // SAFETY: as above; unfolded pieces landed in scratch,
                    // which then holds the whole buffer's length.
                    let theirs = unsafe { region(tmp, a.range.clone()) };
                    reduce_prefix_into(op, theirs, mine);
                }
                Some(if a.step < last {
                    tag::make(tag::REDUCE_SCATTER, lane.reverse, a.step + 1, a.piece)
                } else {
                    tag::make(tag::ALL_GATHER, lane.reverse, 0, a.piece)
                })
            } else if a.step < last {
                Some(tag::make(
                    tag::ALL_GATHER,
                    lane.reverse,
                    a.step + 1,
                    a.piece,
                ))
            } else {
                None
            };
            if let Some(t) = forward {
                // SAFETY: the piece is final for this step and stays untouched
                // until the ring brings it back.
                unsafe { o.send(lane.next, t, as_bytes(mine))? };
            }
        }
        if !progressed {
            break;
        }
    }
    o.finish()
}

/// Reduce-scatter on the forward ring: part p (of `input`'s n balanced
/// parts) is folded in the order p+1, p+2, ..., p and lands on rank p.
pub(crate) fn reduce_scatter<T: Element>(
    cx: &Ctx,
    input: &[T],
    output: &mut [T],
    op: ReduceOp,
    desc: OpDesc,
) -> Result<()> {
    let (n, r, len) = (cx.size(), cx.rank, input.len());
    let pe = layout::piece_elems(cx.piece_bytes, size_of::<T>());
    let mut scratch = cx.scratch.take(2 * std::mem::size_of_val(input));
    let all = words_as_mut::<T>(&mut scratch.words, 2 * len);
    all[..len].copy_from_slice(input);
    let work: *mut T = all.as_mut_ptr();
    // SAFETY: the second half of the scratch buffer.
    let tmp: *mut T = unsafe { work.add(len) };
    let (prev, next) = (cx.world(wrap(r, -1, n)), cx.world(wrap(r, 1, n)));
    let part = |c: usize| layout::part(len, n, c);
    let mut o = cx.begin(desc)?;
    let mut arrivals = Vec::new();
    for s in 0..n - 1 {
        for (k, pr) in layout::pieces(part(wrap(r, -(s as isize) - 2, n)), pe).enumerate() {
            // SAFETY: distinct regions of the scratch buffer, alive past `o`.
            let ticket = unsafe {
                o.recv(
                    prev,
                    tag::make(tag::REDUCE_SCATTER, false, s, k),
                    as_bytes_mut(region(tmp, pr.clone())),
                )?
            };
            arrivals.push((s, k, pr, ticket));
        }
    }
    for (k, pr) in layout::pieces(part(wrap(r, -1, n)), pe).enumerate() {
        // SAFETY: as above.
        unsafe {
            o.send(
                next,
                tag::make(tag::REDUCE_SCATTER, false, 0, k),
                as_bytes(region(work, pr)),
            )?
        };
    }
    for (s, k, pr, ticket) in arrivals {
        o.wait(ticket)?;
        // SAFETY: the piece has arrived; the regions are disjoint.
        let (mine, theirs) = unsafe { (region(work, pr.clone()), region(tmp, pr)) };
        reduce_prefix_into(op, theirs, mine);
        if s + 2 < n {
            // SAFETY: final for this step; read by the I/O thread only.
            unsafe {
                o.send(
                    next,
                    tag::make(tag::REDUCE_SCATTER, false, s + 1, k),
                    as_bytes(mine),
                )?
            };
        }
    }
    o.finish()?;
    // SAFETY: our part of the work buffer, complete now.
    output.copy_from_slice(unsafe { region(work, part(r)) });
    Ok(())
}

/// All-gather on the forward ring: block b starts at rank b and is passed
/// on, piece by piece, as it arrives. `blocks[b]` is rank b's place in
/// `output`; our own block is already in place.
pub(crate) fn all_gather<T: Element>(
    cx: &Ctx,
    output: &mut [T],
    blocks: &[Range<usize>],
    desc: OpDesc,
) -> Result<()> {
    let (n, r) = (cx.size(), cx.rank);
    let pe = layout::piece_elems(cx.piece_bytes, size_of::<T>());
    let base: *mut T = output.as_mut_ptr();
    let (prev, next) = (cx.world(wrap(r, -1, n)), cx.world(wrap(r, 1, n)));
    let mut o = cx.begin(desc)?;
    let mut arrivals = Vec::new();
    for s in 0..n - 1 {
        let b = wrap(r, -(s as isize) - 1, n);
        for (k, pr) in layout::pieces(blocks[b].clone(), pe).enumerate() {
            // SAFETY: blocks are disjoint regions of `output`.
            let ticket = unsafe {
                o.recv(
                    prev,
                    tag::make(tag::ALL_GATHER, false, s, k),
                    as_bytes_mut(region(base, pr.clone())),
                )?
            };
            arrivals.push((s, k, pr, ticket));
        }
    }
    for (k, pr) in layout::pieces(blocks[r].clone(), pe).enumerate() {
        // SAFETY: our block is never written.
        unsafe {
            o.send(
                next,
                tag::make(tag::ALL_GATHER, false, 0, k),
                as_bytes(region(base, pr)),
            )?
        };
    }
    for (s, k, pr, ticket) in arrivals {
        o.wait(ticket)?;
        if s + 2 < n {
            // SAFETY: the piece is complete and never written again.
            unsafe {
                o.send(
                    next,
                    tag::make(tag::ALL_GATHER, false, s + 1, k),
                    as_bytes(region(base, pr)),
                )?
            };
        }
    }
    o.finish()
}

/// Broadcast down the chain root, root+1, ...: each rank forwards a piece
/// as soon as it has it.
pub(crate) fn broadcast<T: Element>(
    cx: &Ctx,
    buf: &mut [T],
    root: usize,
    desc: OpDesc,
) -> Result<()> {
    let (n, r) = (cx.size(), cx.rank);
    let pe = layout::piece_elems(cx.piece_bytes, size_of::<T>());
    let pos = wrap(r, -(root as isize), n);
    let (prev, next) = (cx.world(wrap(r, -1, n)), cx.world(wrap(r, 1, n)));
    let base: *mut T = buf.as_mut_ptr();
    let len = buf.len();
    let mut o: Op = cx.begin(desc)?;
    let mut arrivals = Vec::new();
    for (k, pr) in layout::pieces(0..len, pe).enumerate() {
        let t = tag::make(tag::DIRECT, false, 0, k);
        if pos == 0 {
            // SAFETY: the root only reads its buffer.
            unsafe { o.send(next, t, as_bytes(region(base, pr)))? };
        } else {
            // SAFETY: pieces are disjoint; `o` waits before returning.
            let ticket = unsafe { o.recv(prev, t, as_bytes_mut(region(base, pr.clone())))? };
            arrivals.push((t, pr, ticket));
        }
    }
    for (t, pr, ticket) in arrivals {
        o.wait(ticket)?;
        if pos + 1 < n {
            // SAFETY: the piece is final.
            unsafe { o.send(next, t, as_bytes(region(base, pr)))? };
        }
    }
    o.finish()
}

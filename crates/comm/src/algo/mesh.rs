//! The mesh: one direct exchange with every peer, for latency. Each rank
//! receives every contribution it needs and folds them itself, in the same
//! order as the ring (`layout`), so the two algorithms agree to the bit.

use std::ops::Range;

use super::layout::{self, tag, wrap};
use super::{Ctx, region};
use crate::dtype::{Element, ReduceOp, as_bytes, as_bytes_mut, reduce_into, words_as_mut};
use crate::error::Result;
use crate::wire::OpDesc;

/// Sends `src` to `peer` in pieces (so large messages stripe over all
/// connections).
///
/// # Safety
/// `src` must outlive the op's completion (see `engine::Op::send`).
unsafe fn send_pieces<T: Element>(
    o: &mut crate::engine::Op,
    peer: usize,
    src: *mut T,
    r: Range<usize>,
    pe: usize,
) -> Result<()> {
    for (k, pr) in layout::pieces(r, pe).enumerate() {
        unsafe {
            o.send(
                peer,
                tag::make(tag::DIRECT, false, 0, k),
                as_bytes(region(src, pr)),
            )?
        };
    }
    Ok(())
}

/// Posts receives of `r` (relative to `dst`) from `peer`, in pieces.
unsafe fn recv_pieces<T: Element>(
    o: &mut crate::engine::Op,
    peer: usize,
    dst: *mut T,
    r: Range<usize>,
    pe: usize,
    tickets: &mut Vec<crate::engine::Ticket>,
) -> Result<()> {
    let start = r.start;
    for (k, pr) in layout::pieces(r, pe).enumerate() {
        let rel = pr.start - start..pr.end - start;
        tickets.push(unsafe {
            o.recv(
                peer,
                tag::make(tag::DIRECT, false, 0, k),
                as_bytes_mut(region(dst, rel)),
            )?
        });
    }
    Ok(())
}

pub(crate) fn all_reduce<T: Element>(
    cx: &Ctx,
    buf: &mut [T],
    op: ReduceOp,
    desc: OpDesc,
) -> Result<()> {
    let (n, r, len) = (cx.size(), cx.rank, buf.len());
    let pe = layout::piece_elems(cx.piece_bytes, size_of::<T>());
    let mut scratch = cx.scratch.take(n * std::mem::size_of_val(buf));
    let slots: *mut T = words_as_mut::<T>(&mut scratch.words, n * len).as_mut_ptr();
    // SAFETY: slot r of the scratch buffer, not shared with anyone.
    unsafe { region(slots, r * len..(r + 1) * len) }.copy_from_slice(buf);
    let base: *mut T = buf.as_mut_ptr();
    let mut o = cx.begin(desc)?;
    let mut tickets = Vec::new();
    for p in (0..n).filter(|&p| p != r) {
        // SAFETY: slot p is only written by this receive; `o` waits for it.
        unsafe {
            recv_pieces(
                &mut o,
                cx.world(p),
                slots.add(p * len),
                0..len,
                pe,
                &mut tickets,
            )?
        };
        // SAFETY: `buf` is only read until `o.finish()` below.
        unsafe { send_pieces(&mut o, cx.world(p), base, 0..len, pe)? };
    }
    for t in tickets {
        o.wait(t)?;
    }
    o.finish()?;
    // SAFETY: every slot is complete and the I/O thread is done with `buf`.
    let slot =
        |p: usize, i: Range<usize>| unsafe { region(slots, p * len + i.start..p * len + i.end) };
    for (half, d) in layout::halves(len) {
        for c in 0..n {
            let pr = layout::part(half.len(), n, c);
            let range = half.start + pr.start..half.start + pr.end;
            let mut order = layout::fold_order(c, n, d);
            let first = order.next().unwrap_or(r);
            let acc = &mut buf[range.clone()];
            acc.copy_from_slice(slot(first, range.clone()));
            for p in order {
                reduce_into(op, acc, slot(p, range.clone()));
            }
        }
    }
    Ok(())
}

/// Part p of `input` goes straight to rank p, which folds the parts in the
/// ring's order p+1, p+2, ..., p.
pub(crate) fn reduce_scatter<T: Element>(
    cx: &Ctx,
    input: &[T],
    output: &mut [T],
    op: ReduceOp,
    desc: OpDesc,
) -> Result<()> {
    let (n, r, len) = (cx.size(), cx.rank, input.len());
    let pe = layout::piece_elems(cx.piece_bytes, size_of::<T>());
    let mine = layout::part(len, n, r);
    let m = mine.len();
    let mut scratch = cx.scratch.take(n * m * size_of::<T>());
    let slots: *mut T = words_as_mut::<T>(&mut scratch.words, n * m).as_mut_ptr();
    // SAFETY: slot r, ours alone.
    unsafe { region(slots, r * m..(r + 1) * m) }.copy_from_slice(&input[mine.clone()]);
    let src = input.as_ptr() as *mut T;
    let mut o = cx.begin(desc)?;
    let mut tickets = Vec::new();
    for p in (0..n).filter(|&p| p != r) {
        // SAFETY: distinct slots; `input` is only read (the pointer is never
        // written through).
        unsafe {
            recv_pieces(
                &mut o,
                cx.world(p),
                slots.add(p * m),
                0..m,
                pe,
                &mut tickets,
            )?;
            send_pieces(&mut o, cx.world(p), src, layout::part(len, n, p), pe)?;
        }
    }
    for t in tickets {
        o.wait(t)?;
    }
    o.finish()?;
    // SAFETY: all slots complete.
    let slot = |p: usize| unsafe { region(slots, p * m..(p + 1) * m) };
    let mut order = (1..=n).map(|k| wrap(r, k as isize, n));
    output.copy_from_slice(slot(order.next().unwrap_or(r)));
    for p in order {
        reduce_into(op, output, slot(p));
    }
    Ok(())
}

/// Every rank sends its block to every other rank.
pub(crate) fn all_gather<T: Element>(
    cx: &Ctx,
    output: &mut [T],
    blocks: &[Range<usize>],
    desc: OpDesc,
) -> Result<()> {
    let (n, r) = (cx.size(), cx.rank);
    let pe = layout::piece_elems(cx.piece_bytes, size_of::<T>());
    let base: *mut T = output.as_mut_ptr();
    let mut o = cx.begin(desc)?;
    let mut tickets = Vec::new();
    for p in (0..n).filter(|&p| p != r) {
        // SAFETY: blocks are disjoint; ours is only read.
        unsafe {
            recv_pieces(
                &mut o,
                cx.world(p),
                base.add(blocks[p].start),
                blocks[p].clone(),
                pe,
                &mut tickets,
            )?;
            send_pieces(&mut o, cx.world(p), base, blocks[r].clone(), pe)?;
        }
    }
    for t in tickets {
        o.wait(t)?;
    }
    o.finish()
}

/// The root sends to everyone.
pub(crate) fn broadcast<T: Element>(
    cx: &Ctx,
    buf: &mut [T],
    root: usize,
    desc: OpDesc,
) -> Result<()> {
    let (n, r) = (cx.size(), cx.rank);
    let pe = layout::piece_elems(cx.piece_bytes, size_of::<T>());
    let base: *mut T = buf.as_mut_ptr();
    let len = buf.len();
    let mut o = cx.begin(desc)?;
    let mut tickets = Vec::new();
    if r == root {
        for p in (0..n).filter(|&p| p != r) {
            // SAFETY: the root only reads.
            unsafe { send_pieces(&mut o, cx.world(p), base, 0..len, pe)? };
        }
    } else {
        // SAFETY: `o` waits before `buf` is released.
        unsafe { recv_pieces(&mut o, cx.world(root), base, 0..len, pe, &mut tickets)? };
    }
    for t in tickets {
        o.wait(t)?;
    }
    o.finish()
}

/// Everyone exchanges an empty message with everyone.
pub(crate) fn barrier(cx: &Ctx, desc: OpDesc) -> Result<()> {
    let (n, r) = (cx.size(), cx.rank);
    let mut o = cx.begin(desc)?;
    let mut tickets = Vec::new();
    let t = tag::make(tag::DIRECT, false, 0, 0);
    for p in (0..n).filter(|&p| p != r) {
        // SAFETY: empty buffers.
        unsafe {
            tickets.push(o.recv(cx.world(p), t, &mut [])?);
            o.send(cx.world(p), t, &[])?;
        }
    }
    for t in tickets {
        o.wait(t)?;
    }
    o.finish()
}

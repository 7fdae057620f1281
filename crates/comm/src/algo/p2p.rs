//! Point-to-point messages between any two group members, in pieces so a
//! large message stripes over every connection. Sends are buffered by the
//! receiver's I/O thread, so two ranks sending to each other never block.

use super::layout::{self, tag};
use super::{Ctx, region};
use crate::dtype::{Element, as_bytes, as_bytes_mut};
use crate::error::Result;
use crate::wire::OpDesc;

pub(crate) fn send<T: Element>(cx: &Ctx, data: &[T], dst: usize, desc: OpDesc) -> Result<()> {
    let pe = layout::piece_elems(cx.piece_bytes, size_of::<T>());
    let mut o = cx.begin_from(desc, Vec::new())?;
    for (k, pr) in layout::pieces(0..data.len(), pe).enumerate() {
        // SAFETY: `data` outlives `o`, which waits for these sends.
        unsafe {
            o.send(
                cx.world(dst),
                tag::make(tag::DIRECT, false, 0, k),
                as_bytes(&data[pr]),
            )?
        };
    }
    o.finish()
}

pub(crate) fn recv<T: Element>(cx: &Ctx, buf: &mut [T], src: usize, desc: OpDesc) -> Result<()> {
    let pe = layout::piece_elems(cx.piece_bytes, size_of::<T>());
    let base: *mut T = buf.as_mut_ptr();
    let mut o = cx.begin_from(desc, vec![cx.world(src)])?;
    let mut tickets = Vec::new();
    for (k, pr) in layout::pieces(0..buf.len(), pe).enumerate() {
        // SAFETY: disjoint pieces of `buf`, which outlives `o`.
        tickets.push(unsafe {
            o.recv(
                cx.world(src),
                tag::make(tag::DIRECT, false, 0, k),
                as_bytes_mut(region(base, pr)),
            )?
        });
    }
    for t in tickets {
        o.wait(t)?;
    }
    o.finish()
}

//! How a buffer is cut, shared by every algorithm so that they all add an
//! element's contributions in the same order.
//!
//! An all-reduce buffer has two halves: the first travels the forward ring
//! (rank r sends to r+1), the second the reverse ring. Each half is cut into
//! `n` balanced chunks. Chunk `c` of a half going in direction `d` is
//! reduced in the order the ring visits ranks: `c, c+d, c+2d, ...` (mod n),
//! as a left fold. The mesh folds in exactly this order too, which is why
//! ring and mesh results are bit-identical. Pieces (the pipeline unit) cut
//! chunks further but never change the order.

use std::ops::Range;

/// Part `i` of `len` items cut into `parts` balanced parts.
pub(crate) fn part(len: usize, parts: usize, i: usize) -> Range<usize> {
    let at = |k: usize| ((k as u128 * len as u128) / parts as u128) as usize;
    at(i)..at(i + 1)
}

/// Ring direction: +1 forward, -1 reverse.
pub(crate) type Dir = isize;

/// The halves of an all-reduce buffer and their ring directions.
pub(crate) fn halves(len: usize) -> [(Range<usize>, Dir); 2] {
    let h = len.div_ceil(2);
    [(0..h, 1), (h..len, -1)]
}

/// `(a + k) mod n` for a signed step.
pub(crate) fn wrap(a: usize, k: isize, n: usize) -> usize {
    (a as isize + k).rem_euclid(n as isize) as usize
}

/// The ranks whose contributions chunk `c` folds, first to last.
pub(crate) fn fold_order(c: usize, n: usize, d: Dir) -> impl Iterator<Item = usize> {
    (0..n as isize).map(move |k| wrap(c, d * k, n))
}

/// Pieces of at most `piece` items covering `r`.
pub(crate) fn pieces(r: Range<usize>, piece: usize) -> impl Iterator<Item = Range<usize>> {
    let piece = piece.max(1);
    (r.start..r.end)
        .step_by(piece)
        .map(move |s| s..(s + piece).min(r.end))
}

/// Elements per pipeline piece for a given element size.
pub(crate) fn piece_elems(piece_bytes: usize, elem: usize) -> usize {
    (piece_bytes / elem.max(1)).max(1)
}

/// Message tags: which phase, ring direction, step and piece a message is.
pub(crate) mod tag {
    pub const REDUCE_SCATTER: u64 = 0;
    pub const ALL_GATHER: u64 = 1;
    pub const DIRECT: u64 = 2;

    pub fn make(phase: u64, reverse: bool, step: usize, piece: usize) -> u64 {
        (phase << 60)
            | ((reverse as u64) << 59)
            | ((step as u64 & 0x7ffff) << 40)
            | (piece as u64 & 0xff_ffff_ffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_everything_in_order() {
        for len in [0, 1, 2, 5, 7, 100] {
            for n in 1..=9 {
                let mut at = 0;
                for i in 0..n {
                    let r = part(len, n, i);
                    assert_eq!(r.start, at);
                    at = r.end;
                }
                assert_eq!(at, len);
            }
        }
    }

    #[test]
    fn reverse_order_walks_down() {
        assert_eq!(fold_order(1, 4, -1).collect::<Vec<_>>(), vec![1, 0, 3, 2]);
        assert_eq!(fold_order(3, 4, 1).collect::<Vec<_>>(), vec![3, 0, 1, 2]);
    }

    #[test]
    fn pieces_split_a_range() {
        let p: Vec<_> = pieces(3..10, 3).collect();
        assert_eq!(p, vec![3..6, 6..9, 9..10]);
        assert_eq!(pieces(4..4, 3).count(), 0);
    }

    #[test]
    fn tags_are_distinct_across_fields() {
        let a = tag::make(tag::REDUCE_SCATTER, false, 1, 0);
        let b = tag::make(tag::REDUCE_SCATTER, true, 1, 0);
        let c = tag::make(tag::ALL_GATHER, false, 1, 0);
        let d = tag::make(tag::REDUCE_SCATTER, false, 0, 1);
        assert!(a != b && a != c && a != d && b != c);
    }
}

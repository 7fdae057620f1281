//! Tensor parallelism: how a model's dimensions are divided among the ranks
//! of a tensor group, and the one collective a split layer needs in place.
//!
//! Any group size up to the number of attention heads works, not only
//! divisors: parts are balanced (the first ranks take the larger ones), MLP
//! hidden splits fall on quantization block boundaries, and a rank whose
//! query heads straddle GQA groups loads every KV head they need.

mod all_sum;
mod fingerprint;
pub mod reduce;

use std::ops::Range;

use huddle_comm::Group;

use crate::comm_stats::{all_gather_bytes, timed};
use crate::error::LmError;

pub use all_sum::{all_sum_in_place, all_sum_slice, take_comm_error};
pub use fingerprint::{check_same_model, fingerprint};
pub use reduce::{TpReduce, gather_columns};

/// `rank`'s part of `0..n` divided into `size` balanced parts; the first
/// `n % size` ranks take one more.
pub fn balanced(n: usize, size: usize, rank: usize) -> Range<usize> {
    let size = size.max(1);
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start..start + len
}

/// As [`balanced`] over units of `align` elements (quantization blocks), the
/// last unit possibly short; `None` when some rank would get nothing.
pub fn aligned(n: usize, align: usize, size: usize, rank: usize) -> Option<Range<usize>> {
    let align = align.max(1);
    let units = n.div_ceil(align);
    if units < size {
        return None;
    }
    let r = balanced(units, size, rank);
    Some(r.start * align..(r.end * align).min(n))
}

/// [`Group::all_gather_varied`] of f32 parts (a vocabulary-split head's
/// logits), counted in the model's communication statistics.
pub fn all_gather_varied(
    group: &Group,
    mine: &[f32],
    all: &mut [f32],
    counts: &[usize],
) -> Result<(), LmError> {
    let bytes = all_gather_bytes(group, 4 * mine.len() as u64, 4 * all.len() as u64);
    timed(bytes, || group.all_gather_varied(mine, all, counts)).map_err(LmError::comm)
}

/// One rank's share of an attention layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadPlan {
    /// Query heads this rank computes (global indices).
    pub heads: Range<usize>,
    /// KV heads those queries read (global indices).
    pub kv_heads: Range<usize>,
    /// For each local query head, its KV head's index within `kv_heads`.
    pub kv_of_head: Vec<usize>,
}

impl HeadPlan {
    /// `None` when there are more ranks than heads.
    pub fn new(num_heads: usize, num_kv_heads: usize, size: usize, rank: usize) -> Option<Self> {
        if size > num_heads || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return None;
        }
        let rep = num_heads / num_kv_heads;
        let heads = balanced(num_heads, size, rank);
        let kv_heads = heads.start / rep..(heads.end - 1) / rep + 1;
        let kv_of_head = heads.clone().map(|h| h / rep - kv_heads.start).collect();
        Some(HeadPlan {
            heads,
            kv_heads,
            kv_of_head,
        })
    }

    /// Query heads per local KV head when every local KV head serves the
    /// same number of consecutive local heads (the fast grouped path).
    pub fn uniform_rep(&self) -> Option<usize> {
        let (nq, nkv) = (self.heads.len(), self.kv_heads.len());
        if !nq.is_multiple_of(nkv) {
            return None;
        }
        let rep = nq / nkv;
        self.kv_of_head
            .iter()
            .enumerate()
            .all(|(i, &k)| i / rep == k)
            .then_some(rep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_parts_cover_everything_larger_first() {
        let parts: Vec<_> = (0..2).map(|r| balanced(9, 2, r)).collect();
        assert_eq!(parts, vec![0..5, 5..9]);
        let parts: Vec<_> = (0..4).map(|r| balanced(9, 4, r)).collect();
        assert_eq!(parts, vec![0..3, 3..5, 5..7, 7..9]);
    }

    #[test]
    fn aligned_parts_fall_on_blocks() {
        let parts: Vec<_> = (0..3).map(|r| aligned(128, 32, 3, r).unwrap()).collect();
        assert_eq!(parts, vec![0..64, 64..96, 96..128]);
        assert_eq!(aligned(64, 32, 3, 0), None);
        assert_eq!(aligned(100, 32, 2, 1), Some(64..100));
    }

    #[test]
    fn straddling_heads_load_every_kv_head_they_need() {
        // 6 heads, 2 KV heads (3 per group) over 4 ranks: 2,2,1,1 heads.
        let p = HeadPlan::new(6, 2, 4, 1).unwrap();
        assert_eq!(p.heads, 2..4);
        assert_eq!(p.kv_heads, 0..2);
        assert_eq!(p.kv_of_head, vec![0, 1]);
        assert_eq!(p.uniform_rep(), Some(1));
        // 9 heads, 3 KV heads over 2 ranks: rank 0 has 3 + 2 heads.
        let p = HeadPlan::new(9, 3, 2, 0).unwrap();
        assert_eq!(p.kv_of_head, vec![0, 0, 0, 1, 1]);
        assert_eq!(p.uniform_rep(), None);
        let p = HeadPlan::new(9, 3, 3, 2).unwrap();
        assert_eq!((p.heads, p.kv_heads), (6..9, 2..3));
        assert!(HeadPlan::new(6, 2, 7, 0).is_none());
        assert_eq!(HeadPlan::new(6, 2, 2, 0).unwrap().uniform_rep(), Some(3));
    }
}

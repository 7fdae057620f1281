//! How a sharded-to-all layer (attention output, MLP down) combines the
//! ranks' parts, and the column gathers both ways use.
//!
//! - `Sum` (MLX's sharded-to-all): each rank multiplies its slice of the
//!   input features by its columns of the weight, and the partial outputs
//!   are summed with one all_sum. The sum's rounding order differs from
//!   one rank's dot products; with quantized weights, whose activations
//!   are rounded to 8 bits per block, a last-bit difference moves a
//!   rounding now and then and grows over the layers (2.4 to 5.8% of
//!   max|logit| after SmolLM2's 30 on 2-4 ranks).
//! - `Gather`: the input is gathered whole (one all_gather), each rank
//!   computes its rows of the output over all input features, and the
//!   rows are gathered (a second all_gather). Every output value is the
//!   same dot product one rank computes, so the model's logits are
//!   bit-identical to one rank's, for one more exchange per layer.
//!
//! `Sum` is the default: on this project's 2-core dev machine `Gather`
//! cost 12% of TP=2 decode speed on Qwen2.5-0.5B's shape (two extra
//! exchanges per layer, each a synchronisation point), for bits that
//! differ from one rank's only in rounding.

use huddle_comm::Group;

use crate::error::LmError;

/// What [`crate::LoadOptions::tp_reduce`] asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TpReduce {
    #[default]
    Sum,
    Gather,
}

/// Every rank's count of `mine` (rank order), exchanged once at load.
pub fn widths(group: &Group, mine: usize) -> Result<Vec<usize>, LmError> {
    let mut all = vec![0i64; group.size()];
    group
        .all_gather(&[mine as i64], &mut all)
        .map_err(LmError::comm)?;
    Ok(all.into_iter().map(|w| w.max(0) as usize).collect())
}

/// Rows of `[m, widths[rank]]` from every rank, gathered into `out` as
/// `[m, sum(widths)]` (rank r's columns after those of ranks before it).
/// `blocks` is scratch for `m > 1`, where the ranks' blocks are
/// interleaved into rows.
pub fn gather_columns(
    group: &Group,
    part: &[f32],
    m: usize,
    widths: &[usize],
    blocks: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<(), LmError> {
    if m == 1 {
        return super::all_gather_varied(group, part, out, widths);
    }
    let counts: Vec<usize> = widths.iter().map(|w| w * m).collect();
    let blocks = crate::fused::sized(blocks, out.len());
    super::all_gather_varied(group, part, blocks, &counts)?;
    let total: usize = widths.iter().sum();
    let (mut at, mut col) = (0, 0);
    for &w in widths {
        if w > 0 {
            for (i, row) in blocks[at..at + w * m].chunks_exact(w).enumerate() {
                out[i * total + col..][..w].copy_from_slice(row);
            }
        }
        at += w * m;
        col += w;
    }
    Ok(())
}

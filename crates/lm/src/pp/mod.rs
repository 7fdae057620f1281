//! Pipeline parallelism: the layers divided into contiguous ranges, one per
//! rank of a pipeline group; the first stage also embeds the tokens, the
//! last also holds the final norm and the output head. Hidden states
//! (`[tokens, hidden]` f32) pass from stage to stage with send/recv, and
//! the last stage's logits go back to stage 0, whose rank drives the
//! engine loop and samples.

mod crew;
mod plan;

use std::ops::Range;

use huddle_comm::Group;

pub use crew::Crew;
pub use plan::{FAKE_FREE_MEMORY_ENV, PipelineSplit, apportion, plan};

use crate::comm_stats::timed;
use crate::error::LmError;
use crate::tp;

/// One rank's part of the layer stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Global indices of the layers this stage runs.
    pub layers: Range<usize>,
    /// Position in the pipeline, and the number of stages.
    pub index: usize,
    pub stages: usize,
}

impl Stage {
    /// Layers divided as evenly as possible, the first stages taking the
    /// extra ones.
    pub fn new(num_layers: usize, stages: usize, index: usize) -> Self {
        Stage {
            layers: tp::balanced(num_layers, stages, index),
            index,
            stages: stages.max(1),
        }
    }

    /// Stage `index` of a plan (every stage's layers, see [`plan`]).
    pub fn of(plan: &[Range<usize>], index: usize) -> Self {
        Stage {
            layers: plan.get(index).cloned().unwrap_or(0..0),
            index,
            stages: plan.len().max(1),
        }
    }

    /// The whole model on one stage.
    pub fn whole(num_layers: usize) -> Self {
        Stage::new(num_layers, 1, 0)
    }

    pub fn is_first(&self) -> bool {
        self.index == 0
    }

    pub fn is_last(&self) -> bool {
        self.index + 1 == self.stages
    }
}

/// Sends hidden states (or logits) to pipeline rank `dst`.
pub fn send_slice(group: &Group, x: &[f32], dst: usize) -> Result<(), LmError> {
    timed(4 * x.len() as u64, || group.send(x, dst)).map_err(LmError::comm)
}

/// Receives `out.len()` values from pipeline rank `src` into `out`.
pub fn recv_into(group: &Group, out: &mut [f32], src: usize) -> Result<(), LmError> {
    timed(0, || group.recv(out, src)).map_err(LmError::comm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_split_evenly_first_stages_take_the_extra() {
        let ranges: Vec<_> = (0..3).map(|i| Stage::new(30, 3, i).layers).collect();
        assert_eq!(ranges, vec![0..10, 10..20, 20..30]);
        let ranges: Vec<_> = (0..4).map(|i| Stage::new(30, 4, i).layers).collect();
        assert_eq!(ranges, vec![0..8, 8..16, 16..23, 23..30]);
        let s = Stage::new(2, 3, 2);
        assert_eq!(
            (s.layers.clone(), s.is_first(), s.is_last()),
            (2..2, false, true)
        );
        let s = Stage::of(&[0..4, 4..30], 1);
        assert_eq!((s.layers.clone(), s.is_last()), (4..30, true));
        let w = Stage::whole(5);
        assert!(w.is_first() && w.is_last());
        assert_eq!(w.layers, 0..5);
    }
}

//! Every rank a model is split over: a pipeline group (one rank per stage)
//! and a tensor group (the ranks splitting one stage). Rank 0 of both
//! drives; a step message reaches the other stages' tensor rank 0 over the
//! pipeline group, and each of those passes it on over its tensor group,
//! so no group spanning all ranks is needed.

use huddle_comm::Group;

use crate::engine::{self, Step};
use crate::error::LmError;

#[derive(Clone)]
pub struct Crew {
    pub pipeline: Group,
    pub tensor: Group,
}

impl Crew {
    pub fn new(pipeline: &Group, tensor: &Group) -> Self {
        Crew {
            pipeline: pipeline.clone(),
            tensor: tensor.clone(),
        }
    }

    /// More than one rank in all.
    pub fn is_split(&self) -> bool {
        self.pipeline.size() > 1 || self.tensor.size() > 1
    }

    /// The rank that drives the engine loop and samples.
    pub fn is_leader(&self) -> bool {
        self.pipeline.rank() == 0 && self.tensor.rank() == 0
    }

    /// This rank's index among all of the crew's ranks (stage-major).
    pub fn rank(&self) -> usize {
        self.pipeline.rank() * self.tensor.size() + self.tensor.rank()
    }

    /// The leader's side: sends `step` to every other rank.
    pub fn announce(&self, step: &Step) -> Result<(), LmError> {
        if self.pipeline.size() > 1 {
            engine::announce(&self.pipeline, step)?;
        }
        if self.tensor.size() > 1 {
            engine::announce(&self.tensor, step)?;
        }
        Ok(())
    }

    /// A follower's side: the next step, passed on to this stage's tensor
    /// group when this rank is the stage's tensor rank 0.
    pub fn receive(&self) -> Result<Step, LmError> {
        if self.tensor.rank() != 0 {
            return engine::receive(&self.tensor);
        }
        let step = engine::receive(&self.pipeline)?;
        if self.tensor.size() > 1 {
            engine::announce(&self.tensor, &step)?;
        }
        Ok(step)
    }
}

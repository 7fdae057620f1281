//! The loader model code talks to: a weight source plus shape checks
//! against the config, the load-time quantization choice, and the progress
//! bar.

use std::path::Path;

use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use huddle_comm::Group;

use super::{Slice, Weight, WeightSource};
use crate::error::LmError;
use crate::linear::Shard;
use crate::model::Quantize;
use crate::tp::TpReduce;

pub struct Loader {
    source: Box<dyn WeightSource>,
    quantize: Option<Quantize>,
    bar: ProgressBar,
    tensors: u64,
    shard: Shard,
    group: Group,
    tp_reduce: TpReduce,
}

impl Loader {
    pub fn new(source: Box<dyn WeightSource>, quantize: Option<Quantize>, progress: bool) -> Self {
        let bar = if progress {
            let bar = ProgressBar::with_draw_target(
                Some(source.total_bytes()),
                ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = ProgressStyle::with_template(
                "loading {bar:30} {bytes}/{total_bytes} {msg} ({elapsed})",
            ) {
                bar.set_style(style);
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        Loader {
            source,
            quantize,
            bar,
            tensors: 0,
            shard: Shard::WHOLE,
            group: Group::single(),
            tp_reduce: TpReduce::Sum,
        }
    }

    /// How sharded-to-all layers combine their parts.
    pub fn with_tp_reduce(mut self, mode: TpReduce) -> Self {
        self.tp_reduce = mode;
        self
    }

    pub fn tp_reduce(&self) -> TpReduce {
        self.tp_reduce
    }

    /// Loads this rank's part of a model split over `group`.
    pub fn with_group(mut self, group: Group) -> Self {
        self.shard = Shard {
            rank: group.rank(),
            size: group.size(),
        };
        self.group = group;
        self
    }

    /// The tensor-parallel group split layers sum and gather over.
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// Elements per quantization block of a stored tensor (1 for float):
    /// column slices of it must start and end on multiples of this.
    pub fn block_size(&self, name: &str) -> usize {
        match self.source.meta(name) {
            Some(m) if m.dtype.starts_with('Q') && m.dtype.ends_with('K') => 256,
            Some(m) if m.dtype.starts_with('Q') || m.dtype.starts_with("IQ") => 32,
            _ => 1,
        }
    }

    pub fn path(&self) -> &Path {
        self.source.path()
    }

    /// Which part of each split layer this process reads.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    pub fn quantize(&self) -> Option<Quantize> {
        self.quantize
    }

    pub fn contains(&self, name: &str) -> bool {
        self.source.meta(name).is_some()
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.source.meta(name).map(|m| m.shape)
    }

    /// `slice` of tensor `name`, after checking that the whole stored
    /// tensor has the shape the config implies.
    pub fn weight(
        &mut self,
        name: &str,
        expected: &[usize],
        slice: &Slice,
    ) -> Result<Weight, LmError> {
        let meta = self
            .source
            .meta(name)
            .ok_or_else(|| self.source.missing(name))?;
        if meta.shape != expected {
            return Err(LmError::ShapeMismatch {
                path: self.source.file_of(name),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                found: meta.shape,
            });
        }
        let weight = self.source.load(name, slice)?;
        self.tensors += 1;
        self.bar.inc(meta.bytes);
        self.bar.set_message(format!("{} tensors", self.tensors));
        tracing::trace!(tensor = name, dtype = %meta.dtype, shape = ?meta.shape, %slice, "loaded");
        Ok(weight)
    }

    /// A whole tensor as f32 (norm scales, biases, embeddings).
    pub fn float(&mut self, name: &str, expected: &[usize]) -> Result<Tensor, LmError> {
        Ok(self.weight(name, expected, &Slice::Full)?.into_float()?)
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
        tracing::debug!(tensors = self.tensors, path = %self.source.path().display(), "weights loaded");
    }
}

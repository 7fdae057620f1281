//! The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.

use std::ops::Range;

use candle_core::Tensor;

use crate::error::LmError;
use crate::fused::{Scratch, sized};
use crate::linear::{Linear, Split};
use crate::tp;
use crate::weights::Loader;

#[derive(Debug, Clone)]
pub struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Tensor names of the three projections under a prefix.
pub struct MlpNames {
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

pub const HF_MLP: MlpNames = MlpNames {
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
};

pub const MIXTRAL_EXPERT: MlpNames = MlpNames {
    gate: "w1",
    up: "w3",
    down: "w2",
};

impl Mlp {
    /// This rank's part of the block, split over the loader's tensor group
    /// by hidden width: gate and up by rows, down by columns (then summed).
    /// Split points fall on quantization blocks (32, or 256 for K-quants)
    /// where the width allows.
    pub fn load(
        loader: &mut Loader,
        prefix: &str,
        names: &MlpNames,
        hidden: usize,
        intermediate: usize,
        bias: bool,
    ) -> Result<Self, LmError> {
        let (rank, size) = (loader.group().rank(), loader.group().size());
        let block = loader.block_size(&format!("{prefix}.{}.weight", names.down));
        let range = [block.max(32), 1]
            .into_iter()
            .find_map(|align| tp::aligned(intermediate, align, size, rank))
            .ok_or_else(|| LmError::Unsplittable {
                ranks: size,
                why: format!("MLP width {intermediate} of {prefix}"),
            })?;
        let dims = (hidden, intermediate);
        Mlp::load_range(loader, prefix, names, dims, bias, range, Split::Input)
    }

    /// The whole block on this rank (an expert of a mixture whose experts
    /// are divided among ranks).
    pub fn load_whole(
        loader: &mut Loader,
        prefix: &str,
        names: &MlpNames,
        hidden: usize,
        intermediate: usize,
        bias: bool,
    ) -> Result<Self, LmError> {
        let dims = (hidden, intermediate);
        Mlp::load_range(
            loader,
            prefix,
            names,
            dims,
            bias,
            0..intermediate,
            Split::Whole,
        )
    }

    fn load_range(
        loader: &mut Loader,
        prefix: &str,
        names: &MlpNames,
        (hidden, intermediate): (usize, usize),
        bias: bool,
        range: Range<usize>,
        down_split: Split,
    ) -> Result<Self, LmError> {
        let mut part = |name: &str, dims, split| {
            Linear::load_part(
                loader,
                &format!("{prefix}.{name}"),
                dims,
                bias,
                split,
                range.clone(),
            )
        };
        Ok(Mlp {
            gate: part(names.gate, (hidden, intermediate), Split::Output)?,
            up: part(names.up, (hidden, intermediate), Split::Output)?,
            down: part(names.down, (intermediate, hidden), down_split)?,
        })
    }

    /// [`Mlp::forward`] of `t` rows into `out`, through `scratch`.
    pub fn forward_into(
        &self,
        x: &[f32],
        t: usize,
        scratch: &mut Scratch,
        out: &mut [f32],
    ) -> Result<(), LmError> {
        let width = self.gate.out_features()?;
        let (gate, up) = (
            sized(&mut scratch.gate, t * width),
            sized(&mut scratch.up, t * width),
        );
        Linear::forward_all_into(&[&self.gate, &self.up], x, t, &mut [&mut *gate, &mut *up])?;
        huddle_kernels::ops::swiglu(gate, up)
            .map_err(|e| LmError::Candle(candle_core::Error::Msg(format!("mlp: {e}"))))?;
        self.down.forward_into(gate, t, out)
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut gate_up = Linear::forward_all(&[&self.gate, &self.up], x)?.into_iter();
        let (Some(gate), Some(up)) = (gate_up.next(), gate_up.next()) else {
            candle_core::bail!("mlp: gate and up projections missing")
        };
        self.down.forward(&(gate.silu()? * up)?)
    }
}

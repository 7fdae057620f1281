//! The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.

use candle_core::Tensor;

use crate::error::LmError;
use crate::linear::{Linear, Split};
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
    pub fn load(
        loader: &mut Loader,
        prefix: &str,
        names: &MlpNames,
        hidden: usize,
        intermediate: usize,
        bias: bool,
    ) -> Result<Self, LmError> {
        Ok(Mlp {
            gate: Linear::load(
                loader,
                &format!("{prefix}.{}", names.gate),
                hidden,
                intermediate,
                bias,
                Split::Output,
            )?,
            up: Linear::load(
                loader,
                &format!("{prefix}.{}", names.up),
                hidden,
                intermediate,
                bias,
                Split::Output,
            )?,
            down: Linear::load(
                loader,
                &format!("{prefix}.{}", names.down),
                intermediate,
                hidden,
                bias,
                Split::Input,
            )?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = self.gate.forward(x)?.silu()?;
        let up = self.up.forward(x)?;
        self.down.forward(&(gate * up)?)
    }
}

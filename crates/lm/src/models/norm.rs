//! RMSNorm with a learned scale.

use candle_core::Tensor;

use crate::error::LmError;
use crate::weights::Loader;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(loader: &mut Loader, name: &str, dim: usize, eps: f64) -> Result<Self, LmError> {
        Ok(RmsNorm {
            weight: loader.float(name, &[dim])?,
            eps: eps as f32,
        })
    }

    /// Normalizes over the last dimension of a contiguous tensor.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

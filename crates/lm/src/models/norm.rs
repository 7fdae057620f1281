//! RMSNorm with a learned scale.

use huddle_kernels::{Kernels, ops};

use crate::error::LmError;
use crate::weights::Loader;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

fn kernel_err(e: huddle_kernels::KernelError) -> LmError {
    LmError::Candle(candle_core::Error::Msg(format!("rms_norm: {e}")))
}

impl RmsNorm {
    pub fn load(loader: &mut Loader, name: &str, dim: usize, eps: f64) -> Result<Self, LmError> {
        Ok(RmsNorm {
            weight: loader.float(name, &[dim])?.to_vec1::<f32>()?,
            eps: eps as f32,
        })
    }

    /// Rows of `x` normalized into `out`.
    pub fn forward_into(&self, x: &[f32], out: &mut [f32]) -> Result<(), LmError> {
        ops::rms_norm(Kernels::best(), x, &self.weight, self.eps, out).map_err(kernel_err)
    }

    /// Rows of `x` normalized in place (per-head q/k norms).
    pub fn in_place(&self, x: &mut [f32]) -> Result<(), LmError> {
        ops::rms_norm_in_place(Kernels::best(), x, &self.weight, self.eps).map_err(kernel_err)
    }

    /// The residual step: `x += delta`, then its rows normalized into `out`.
    pub fn add_forward_into(
        &self,
        x: &mut [f32],
        delta: &[f32],
        out: &mut [f32],
    ) -> Result<(), LmError> {
        ops::add_rms_norm(Kernels::best(), x, delta, &self.weight, self.eps, out)
            .map_err(kernel_err)
    }
}

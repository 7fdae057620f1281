//! The model's hot path on plain f32 slices instead of candle tensor
//! operations: attention over the KV cache with its softmax in one pass
//! (`attention`), and buffers a layer reuses from step to step, so a decode
//! step allocates no temporaries beyond what candle's remaining ops need.
//!
//! Every function here computes each row of its output with the same code
//! whatever rows come with it: a prompt in pieces, in one pass, or a decode
//! step all give the same bits for the same position.

pub mod attention;

/// Buffers of one layer's step, reused by every layer and every step
/// (grown to the largest step seen, never shrunk).
#[derive(Default)]
pub struct Scratch {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub attn: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
}

/// The first `n` values of `buf`, grown (zeroed) when it is shorter.
pub fn sized(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
}

/// `src` into `dst`, which must be as long (values a candle op computed
/// for one of the decoder's buffers).
pub fn copy_into(what: &str, src: &[f32], dst: &mut [f32]) -> Result<(), crate::error::LmError> {
    if src.len() != dst.len() {
        return Err(crate::error::LmError::Candle(candle_core::Error::Msg(
            format!("{what}: {} values for a buffer of {}", src.len(), dst.len()),
        )));
    }
    dst.copy_from_slice(src);
    Ok(())
}

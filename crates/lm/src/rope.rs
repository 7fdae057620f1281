//! Rotary position embeddings with the scalings Llama 3 and YaRN use.
//! The cos/sin tables are shared by all layers and grown in chunks as
//! positions advance, so a step never recomputes them.

use std::f64::consts::PI;

use crate::config::{RopeScaling, TransformerConfig};

const TABLE_CHUNK: usize = 1024;

pub struct Rope {
    inv_freq: Vec<f64>,
    /// YaRN's attention factor, folded into cos and sin.
    mscale: f64,
    interleaved: bool,
    head_dim: usize,
    /// `[cached, head_dim / 2]` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
    cached: usize,
    /// Geometric growth stops here (the context length).
    limit: usize,
}

/// Per-pair inverse frequencies for `head_dim` with `scaling` applied.
/// `freq_factors` (GGUF's `rope_freqs`) divide them when present.
pub fn inv_freq(
    head_dim: usize,
    theta: f64,
    scaling: &RopeScaling,
    freq_factors: Option<&[f32]>,
) -> Vec<f64> {
    let half = head_dim / 2;
    let base: Vec<f64> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
        .collect();
    let mut inv: Vec<f64> = match *scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: orig,
            beta_fast,
            beta_slow,
            ..
        } => {
            let dim = head_dim as f64;
            let correction =
                |rotations: f64| dim * (orig / (rotations * 2.0 * PI)).ln() / (2.0 * theta.ln());
            let low = correction(beta_fast).floor().max(0.0);
            let high = correction(beta_slow).ceil().min(dim - 1.0);
            let high = if low == high { high + 0.001 } else { high };
            base.iter()
                .enumerate()
                .map(|(i, &extrapolated)| {
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let keep = 1.0 - ramp;
                    extrapolated / factor * (1.0 - keep) + extrapolated * keep
                })
                .collect()
        }
    };
    if let Some(ff) = freq_factors {
        for (f, d) in inv.iter_mut().zip(ff) {
            *f /= *d as f64;
        }
    }
    inv
}

impl Rope {
    pub fn new(cfg: &TransformerConfig, freq_factors: Option<&[f32]>) -> candle_core::Result<Self> {
        let mscale = match cfg.rope_scaling {
            RopeScaling::Yarn {
                attention_factor, ..
            } => attention_factor,
            _ => 1.0,
        };
        let mut rope = Rope {
            inv_freq: inv_freq(
                cfg.head_dim,
                cfg.rope_theta,
                &cfg.rope_scaling,
                freq_factors,
            ),
            mscale,
            interleaved: cfg.rope_interleaved,
            head_dim: cfg.head_dim,
            cos: Vec::new(),
            sin: Vec::new(),
            cached: 0,
            limit: cfg.context_length,
        };
        rope.ensure(TABLE_CHUNK.min(cfg.context_length.max(1)))?;
        Ok(rope)
    }

    /// Makes the tables cover positions `0..len`. They grow geometrically
    /// (up to the context length), so filling a long context recomputes
    /// them O(1) times per position.
    pub fn ensure(&mut self, len: usize) -> candle_core::Result<()> {
        if len <= self.cached {
            return Ok(());
        }
        let doubled = (2 * self.cached).min(self.limit);
        let len = (len.div_ceil(TABLE_CHUNK) * TABLE_CHUNK).max(doubled);
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in 0..len {
            for f in &self.inv_freq {
                let angle = pos as f64 * f;
                cos.push((angle.cos() * self.mscale) as f32);
                sin.push((angle.sin() * self.mscale) as f32);
            }
        }
        self.cos = cos;
        self.sin = sin;
        self.cached = len;
        Ok(())
    }

    /// Rotates `x` in place: `t` token-major rows of `heads * head_dim`
    /// values, for positions `pos..pos + t`. Call [`Rope::ensure`] first.
    pub fn apply(&self, x: &mut [f32], heads: usize, pos: usize) -> candle_core::Result<()> {
        let half = self.head_dim / 2;
        let t = x.len() / (heads * self.head_dim).max(1);
        if pos + t > self.cached {
            candle_core::bail!(
                "rope: positions up to {} past the table's {}",
                pos + t,
                self.cached
            )
        }
        let (cos, sin) = (
            &self.cos[pos * half..(pos + t) * half],
            &self.sin[pos * half..(pos + t) * half],
        );
        huddle_kernels::ops::rope(x, heads, self.head_dim, cos, sin, self.interleaved)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let plain = inv_freq(128, 500000.0, &RopeScaling::None, None);
        let scaled = inv_freq(128, 500000.0, &scaling, None);
        assert_eq!(plain[0], scaled[0]);
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-15);
    }

    #[test]
    fn linear_scaling_divides_every_frequency() {
        let plain = inv_freq(16, 10000.0, &RopeScaling::None, None);
        let scaled = inv_freq(16, 10000.0, &RopeScaling::Linear { factor: 2.0 }, None);
        for (p, s) in plain.iter().zip(&scaled) {
            assert!((p / 2.0 - s).abs() < 1e-15);
        }
    }

    #[test]
    fn yarn_interpolates_between_extrapolation_and_interpolation() {
        let scaling = RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 4096.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 1.0,
        };
        let plain = inv_freq(64, 10000.0, &RopeScaling::None, None);
        let scaled = inv_freq(64, 10000.0, &scaling, None);
        assert_eq!(plain[0], scaled[0]);
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 4.0).abs() < 1e-15);
    }

    #[test]
    fn tables_grow_past_the_first_chunk() {
        let cfg = TransformerConfig {
            context_length: 10_000,
            ..tiny_config(false)
        };
        let mut rope = Rope::new(&cfg, None).unwrap();
        assert_eq!(rope.cached, TABLE_CHUNK);
        rope.ensure(3000).unwrap();
        assert!(rope.cached >= 3000 && rope.cached <= 10_000);
        let half = rope.inv_freq.len();
        let got = rope.cos[2999 * half + 1];
        let want = (2999.0 * rope.inv_freq[1]).cos() as f32;
        assert!((got - want).abs() < 1e-6);
    }

    fn tiny_config(interleaved: bool) -> TransformerConfig {
        TransformerConfig {
            architecture: "llama".into(),
            hidden_size: 8,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 8,
            vocab_size: 1,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::None,
            rope_interleaved: interleaved,
            context_length: 16,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            sliding_window: None,
            moe: None,
        }
    }

    #[test]
    fn interleaved_and_half_rotation_agree_up_to_a_permutation() {
        // GGUF llama permutes q/k rows so that interleaved rotation of the
        // permuted vector equals half rotation of the original.
        let cfg_half = tiny_config(false);
        let cfg_inter = tiny_config(true);
        let half = Rope::new(&cfg_half, None).unwrap();
        let inter = Rope::new(&cfg_inter, None).unwrap();
        let v: Vec<f32> = (0..8).map(|i| i as f32 + 1.0).collect();
        // llama.cpp's permutation: (head, 2, d/2) -> (head, d/2, 2).
        let perm: Vec<f32> = (0..4).flat_map(|i| [v[i], v[i + 4]]).collect();
        let (mut a, mut b) = (v, perm);
        half.apply(&mut a, 1, 5).unwrap();
        inter.apply(&mut b, 1, 5).unwrap();
        let b_unperm: Vec<f32> = (0..8)
            .map(|j| if j < 4 { b[2 * j] } else { b[2 * (j - 4) + 1] })
            .collect();
        for (x, y) in a.iter().zip(&b_unperm) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b_unperm:?}");
        }
    }
}

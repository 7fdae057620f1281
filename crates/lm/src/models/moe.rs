//! Sparse mixture-of-experts feed-forward (Qwen3-MoE, Mixtral): a router
//! scores every expert per token, each token runs through its top-k
//! experts, and their outputs are summed weighted by the router's
//! probabilities.

use candle_core::{Device, Tensor};
use huddle_comm::Group;

use super::mlp::{HF_MLP, MIXTRAL_EXPERT, Mlp};
use crate::config::{ExpertNaming, MoeConfig};
use crate::error::LmError;
use crate::linear::{Linear, Split};
use crate::tp;
use crate::weights::Loader;

#[derive(Debug, Clone)]
pub struct SparseMoe {
    router: Linear,
    /// This rank's experts, `first_expert..first_expert + experts.len()`;
    /// the others' contributions arrive through the all_sum.
    experts: Vec<Mlp>,
    first_expert: usize,
    group: Group,
    top_k: usize,
    norm_topk_prob: bool,
}

impl SparseMoe {
    /// `prefix`: `model.layers.N`.
    pub fn load(
        loader: &mut Loader,
        prefix: &str,
        hidden: usize,
        moe: &MoeConfig,
    ) -> Result<Self, LmError> {
        let (block, names) = match moe.naming {
            ExpertNaming::Qwen => ("mlp", &HF_MLP),
            ExpertNaming::Mixtral => ("block_sparse_moe", &MIXTRAL_EXPERT),
        };
        let router = Linear::load(
            loader,
            &format!("{prefix}.{block}.gate"),
            hidden,
            moe.num_experts,
            false,
            Split::Whole,
        )?;
        // Whole experts per rank (not each expert's width split): expert
        // widths are often too narrow to cut on quantization blocks.
        let group = loader.group().clone();
        let first_expert = tp::balanced(moe.num_experts, group.size(), group.rank()).start;
        let experts = tp::balanced(moe.num_experts, group.size(), group.rank())
            .map(|e| {
                Mlp::load_whole(
                    loader,
                    &format!("{prefix}.{block}.experts.{e}"),
                    names,
                    hidden,
                    moe.expert_intermediate_size,
                    false,
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(SparseMoe {
            router,
            experts,
            first_expert,
            group,
            top_k: moe.experts_per_token,
            norm_topk_prob: moe.norm_topk_prob,
        })
    }

    /// `x`: `[t, hidden]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let probs = candle_nn::ops::softmax_last_dim(&self.router.forward(x)?)?;
        let probs = probs.to_vec2::<f32>()?;
        let experts = probs.first().map_or(0, Vec::len);
        let routes = route(&probs, self.top_k, self.norm_topk_prob, experts);
        let mut out = x.zeros_like()?;
        let mine = routes.into_iter().skip(self.first_expert);
        for (expert, (tokens, weights)) in self.experts.iter().zip(mine) {
            if tokens.is_empty() {
                continue;
            }
            let n = tokens.len();
            let index = Tensor::from_vec(tokens, n, &Device::Cpu)?;
            let weights = Tensor::from_vec(weights, (n, 1), &Device::Cpu)?;
            let y = expert.forward(&x.index_select(&index, 0)?)?;
            out = out.index_add(&index, &y.broadcast_mul(&weights)?, 0)?;
        }
        tp::all_sum_in_place(out, &self.group)
    }
}

/// For each expert, the tokens routed to it and their weights.
fn route(
    probs: &[Vec<f32>],
    top_k: usize,
    normalize: bool,
    experts: usize,
) -> Vec<(Vec<u32>, Vec<f32>)> {
    let mut routes = vec![(Vec::new(), Vec::new()); experts];
    let mut order: Vec<usize> = Vec::with_capacity(experts);
    for (token, p) in probs.iter().enumerate() {
        order.clear();
        order.extend(0..p.len());
        // Ties go to the lower expert index, as a stable sort gives.
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        let chosen = &order[..top_k.min(order.len())];
        let sum: f32 = chosen.iter().map(|&e| p[e]).sum();
        for &e in chosen {
            let w = if normalize && sum > 0.0 {
                p[e] / sum
            } else {
                p[e]
            };
            routes[e].0.push(token as u32);
            routes[e].1.push(w);
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn route_picks_top_k_and_renormalizes() {
        let probs = vec![vec![0.1, 0.6, 0.3], vec![0.5, 0.2, 0.3]];
        let r = route(&probs, 2, true, 3);
        assert_eq!(r[0].0, vec![1]);
        assert_eq!(r[1].0, vec![0]);
        assert_eq!(r[2].0, vec![0, 1]);
        assert!((r[1].1[0] - 0.6 / 0.9).abs() < 1e-6);
        let r = route(&probs, 1, false, 3);
        assert_eq!(r[0].1, vec![0.5]);
    }
}

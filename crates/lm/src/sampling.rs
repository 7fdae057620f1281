//! Picking the next token from logits.
//!
//! As in llama.cpp and mlx-lm, the filters (top-k, top-p, min-p) look at
//! the temperature-1 distribution and the temperature applies last, to the
//! tokens that survived. Temperature 0 is greedy. The buffers live in the
//! [`Sampler`] and are reused for every token.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings; [`SamplingParams::default`] is greedy with no filter.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token.
    pub temperature: f32,
    /// Keep the most likely tokens whose probabilities add up to this; 1 = off.
    pub top_p: f32,
    /// Keep this many most likely tokens; 0 = off.
    pub top_k: usize,
    /// Drop tokens less likely than this fraction of the top token; 0 = off.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens; 1 = off.
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repetition_context: usize,
    /// Seed for reproducible sampling; `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repetition_context: 20,
            seed: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    #[error("{name} = {value} is out of range ({range})")]
    OutOfRange {
        name: &'static str,
        value: f32,
        range: &'static str,
    },
    #[error("no logits to sample from")]
    EmptyLogits,
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), SamplingError> {
        let check = |name, value: f32, ok: bool, range| {
            if ok && value.is_finite() {
                Ok(())
            } else {
                Err(SamplingError::OutOfRange { name, value, range })
            }
        };
        check(
            "temperature",
            self.temperature,
            self.temperature >= 0.0,
            ">= 0",
        )?;
        check(
            "top_p",
            self.top_p,
            self.top_p > 0.0 && self.top_p <= 1.0,
            "(0, 1]",
        )?;
        check(
            "min_p",
            self.min_p,
            (0.0..=1.0).contains(&self.min_p),
            "[0, 1]",
        )?;
        check(
            "repetition_penalty",
            self.repetition_penalty,
            self.repetition_penalty > 0.0,
            "> 0",
        )
    }

    fn filters_anything(&self) -> bool {
        self.top_k > 0 || self.top_p < 1.0 || self.min_p > 0.0
    }
}

/// A token id and its logit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub logit: f32,
}

/// Samples token ids; keeps its random state and buffers across calls.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    candidates: Vec<Candidate>,
    penalized: Vec<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, SamplingError> {
        params.validate()?;
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(Sampler {
            params,
            rng,
            candidates: Vec::new(),
            penalized: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Whether [`Sampler::sample`] is plain argmax (temperature 0, no
    /// repetition penalty): the model can then pick the token itself
    /// ([`crate::Logits::Argmax`]) without handing over every logit.
    pub fn is_greedy(&self) -> bool {
        self.params.temperature == 0.0 && self.params.repetition_penalty == 1.0
    }

    /// Picks the next token. `logits` is modified in place (repetition
    /// penalty); `history` is the sequence so far (its tail is penalized).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32, SamplingError> {
        if logits.is_empty() {
            return Err(SamplingError::EmptyLogits);
        }
        if self.params.repetition_penalty != 1.0 {
            let start = history.len().saturating_sub(self.params.repetition_context);
            apply_repetition_penalty(
                logits,
                &history[start..],
                self.params.repetition_penalty,
                &mut self.penalized,
            );
        }
        if self.params.temperature == 0.0 {
            return Ok(argmax(logits));
        }
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(id, &logit)| Candidate {
                id: id as u32,
                logit,
            }));
        if self.params.filters_anything() {
            filter_candidates(&mut self.candidates, &self.params);
        }
        Ok(sample_with_temperature(
            &self.candidates,
            self.params.temperature,
            &mut self.rng,
        ))
    }
}

/// The index of the largest logit (the first of equals); NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_logit = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_logit {
            best = i;
            best_logit = l;
        }
    }
    best as u32
}

/// Penalizes each distinct token of `recent` once: positive logits are
/// divided by `penalty`, negative ones multiplied (the CTRL paper's rule,
/// as in transformers and mlx-lm). `seen` is scratch space.
pub fn apply_repetition_penalty(
    logits: &mut [f32],
    recent: &[u32],
    penalty: f32,
    seen: &mut Vec<u32>,
) {
    seen.clear();
    for &id in recent {
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        if let Some(logit) = logits.get_mut(id as usize) {
            *logit = if *logit > 0.0 {
                *logit / penalty
            } else {
                *logit * penalty
            };
        }
    }
}

/// Sorts candidates by logit (descending) and keeps those that pass
/// top-k, top-p and min-p, all on the temperature-1 distribution. Each
/// filter keeps a prefix of the sorted list, so their order does not
/// matter. At least one candidate always survives.
pub fn filter_candidates(candidates: &mut Vec<Candidate>, params: &SamplingParams) {
    if candidates.is_empty() {
        return;
    }
    let descending = |a: &Candidate, b: &Candidate| b.logit.total_cmp(&a.logit);
    // Probabilities are normalized over the whole vocabulary, so compute the
    // normalizer before anything shrinks the set.
    let max = candidates
        .iter()
        .map(|c| c.logit)
        .fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = candidates.iter().map(|c| (c.logit - max).exp()).sum();
    if params.min_p > 0.0 {
        // p_i >= min_p * p_max  <=>  logit_i >= max + ln(min_p); the top
        // token always passes. No sort needed, and it shrinks what follows.
        let threshold = max + params.min_p.ln();
        candidates.retain(|c| c.logit >= threshold || c.logit == max);
    }
    if params.top_k > 0 && params.top_k < candidates.len() {
        candidates.select_nth_unstable_by(params.top_k - 1, descending);
        candidates.truncate(params.top_k);
    }
    if params.top_p < 1.0 {
        keep_head_for_top_p(candidates, params.top_p, max, total);
    }
    candidates.sort_unstable_by(descending);
    if params.top_p < 1.0 {
        let mut cumulative = 0.0;
        let mut keep = candidates.len();
        for (i, c) in candidates.iter().enumerate() {
            cumulative += (c.logit - max).exp() / total;
            if cumulative >= params.top_p {
                keep = i + 1;
                break;
            }
        }
        candidates.truncate(keep);
    }
}

/// Sorting a whole vocabulary per token is the costly part of top-p; the
/// kept set is usually within the few most likely tokens. If the `HEAD`
/// most likely already reach `top_p`, drop the rest before sorting.
fn keep_head_for_top_p(candidates: &mut Vec<Candidate>, top_p: f32, max: f32, total: f32) {
    const HEAD: usize = 64;
    if candidates.len() <= HEAD {
        return;
    }
    candidates.select_nth_unstable_by(HEAD - 1, |a, b| b.logit.total_cmp(&a.logit));
    let head: f32 = candidates[..HEAD]
        .iter()
        .map(|c| (c.logit - max).exp() / total)
        .sum();
    if head >= top_p {
        candidates.truncate(HEAD);
    }
}

/// Draws one candidate with probability proportional to exp(logit / t).
fn sample_with_temperature(candidates: &[Candidate], temperature: f32, rng: &mut StdRng) -> u32 {
    let max = candidates
        .iter()
        .map(|c| c.logit)
        .fold(f32::NEG_INFINITY, f32::max);
    let weight = |c: &Candidate| ((c.logit - max) / temperature).exp();
    let total: f32 = candidates.iter().map(weight).sum();
    if !(total > 0.0 && total.is_finite()) {
        // All -inf or NaN: nothing to weigh, fall back to the first.
        return candidates.first().map_or(0, |c| c.id);
    }
    let mut target = rng.random::<f32>() * total;
    for c in candidates {
        target -= weight(c);
        if target < 0.0 {
            return c.id;
        }
    }
    // Rounding can leave a sliver past the last weight.
    candidates
        .iter()
        .rev()
        .find(|c| weight(c) > 0.0)
        .map_or(0, |c| c.id)
}

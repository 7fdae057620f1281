//! Sampling filters on small logit vectors, and seed determinism.

use huddle_lm::sampling::{
    Candidate, Sampler, SamplingParams, apply_repetition_penalty, argmax, filter_candidates,
};

fn candidates(logits: &[f32]) -> Vec<Candidate> {
    logits
        .iter()
        .enumerate()
        .map(|(id, &logit)| Candidate {
            id: id as u32,
            logit,
        })
        .collect()
}

fn kept_ids(logits: &[f32], params: &SamplingParams) -> Vec<u32> {
    let mut c = candidates(logits);
    filter_candidates(&mut c, params);
    c.iter().map(|c| c.id).collect()
}

/// Logits whose softmax is exactly the given probabilities.
fn logits_of(probs: &[f32]) -> Vec<f32> {
    probs.iter().map(|p| p.ln()).collect()
}

#[test]
fn greedy_picks_the_largest_logit() {
    let mut sampler = Sampler::new(SamplingParams::default()).expect("valid params");
    let mut logits = vec![0.1, 2.5, -1.0, 2.4];
    assert_eq!(sampler.sample(&mut logits, &[]).expect("samples"), 1);
    assert_eq!(argmax(&[f32::NAN, 1.0, 3.0]), 2);
}

#[test]
fn top_k_keeps_the_k_most_likely() {
    let params = SamplingParams {
        top_k: 2,
        temperature: 1.0,
        ..Default::default()
    };
    assert_eq!(kept_ids(&[0.5, 3.0, -2.0, 2.0, 1.0], &params), vec![1, 3]);
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_p() {
    let logits = logits_of(&[0.1, 0.5, 0.25, 0.15]);
    let params = |top_p| SamplingParams {
        top_p,
        temperature: 1.0,
        ..Default::default()
    };
    // 0.5 alone is not 0.6; 0.5 + 0.25 is.
    assert_eq!(kept_ids(&logits, &params(0.6)), vec![1, 2]);
    assert_eq!(kept_ids(&logits, &params(0.45)), vec![1]);
    assert_eq!(kept_ids(&logits, &params(0.95)), vec![1, 2, 3, 0]);
}

#[test]
fn min_p_drops_tokens_below_a_fraction_of_the_top() {
    let logits = logits_of(&[0.1, 0.5, 0.25, 0.15]);
    let params = SamplingParams {
        min_p: 0.25,
        temperature: 1.0,
        ..Default::default()
    };
    // Threshold 0.25 * 0.5 = 0.125: 0.5, 0.25 and 0.15 survive, 0.1 does not.
    assert_eq!(kept_ids(&logits, &params), vec![1, 2, 3]);
}

#[test]
fn filters_always_keep_at_least_one_token() {
    let params = SamplingParams {
        top_p: 0.01,
        min_p: 1.0,
        top_k: 1,
        temperature: 1.0,
        ..Default::default()
    };
    assert_eq!(kept_ids(&[1.0, 1.0, 0.0], &params).len(), 1);
}

#[test]
fn repetition_penalty_shrinks_recent_logits_toward_unlikely() {
    let mut logits = vec![2.0, -2.0, 1.0, 4.0];
    let mut seen = Vec::new();
    // Token 0 appears twice but is penalized once.
    apply_repetition_penalty(&mut logits, &[0, 1, 0], 2.0, &mut seen);
    assert_eq!(logits, vec![1.0, -4.0, 1.0, 4.0]);
}

#[test]
fn repetition_penalty_changes_the_greedy_choice() {
    let params = SamplingParams {
        repetition_penalty: 3.0,
        repetition_context: 2,
        ..Default::default()
    };
    let mut sampler = Sampler::new(params).expect("valid params");
    let mut logits = vec![3.0, 2.0];
    assert_eq!(sampler.sample(&mut logits, &[0]).expect("samples"), 1);
    // Outside the context window the penalty does not apply.
    let mut logits = vec![3.0, 2.0];
    assert_eq!(sampler.sample(&mut logits, &[0, 1, 1]).expect("samples"), 0);
}

fn draw(seed: u64, n: usize) -> Vec<u32> {
    let params = SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        ..Default::default()
    };
    let mut sampler = Sampler::new(params).expect("valid params");
    let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
    (0..n)
        .map(|_| {
            let mut l = logits.clone();
            sampler.sample(&mut l, &[]).expect("samples")
        })
        .collect()
}

#[test]
fn same_seed_gives_the_same_tokens() {
    assert_eq!(draw(42, 64), draw(42, 64));
}

#[test]
fn different_seeds_give_different_tokens() {
    // 64 draws over ~50 tokens: equal sequences would mean the seed is ignored.
    assert_ne!(draw(1, 64), draw(2, 64));
}

#[test]
fn sampling_only_returns_surviving_tokens() {
    let params = SamplingParams {
        temperature: 2.0,
        top_k: 2,
        seed: Some(7),
        ..Default::default()
    };
    let mut sampler = Sampler::new(params).expect("valid params");
    for _ in 0..200 {
        let mut logits = vec![0.0, 5.0, 1.0, 4.9, 0.5];
        let id = sampler.sample(&mut logits, &[]).expect("samples");
        assert!(id == 1 || id == 3, "sampled {id}");
    }
}

#[test]
fn low_temperature_concentrates_on_the_top_token() {
    let params = SamplingParams {
        temperature: 0.05,
        seed: Some(3),
        ..Default::default()
    };
    let mut sampler = Sampler::new(params).expect("valid params");
    let top = (0..100)
        .filter(|_| {
            let mut logits = vec![1.0, 2.0, 1.5];
            sampler.sample(&mut logits, &[]).expect("samples") == 1
        })
        .count();
    assert!(top >= 99, "top token drawn {top} of 100 times");
}

#[test]
fn out_of_range_parameters_are_rejected() {
    for params in [
        SamplingParams {
            temperature: -1.0,
            ..Default::default()
        },
        SamplingParams {
            top_p: 0.0,
            ..Default::default()
        },
        SamplingParams {
            min_p: 1.5,
            ..Default::default()
        },
        SamplingParams {
            repetition_penalty: 0.0,
            ..Default::default()
        },
    ] {
        assert!(Sampler::new(params.clone()).is_err(), "{params:?} accepted");
    }
}

#[test]
fn top_p_over_a_large_vocabulary_keeps_the_same_set_as_a_full_sort() {
    // 1000 tokens: a few likely ones and a long flat tail, so both the
    // shortcut (head reaches p) and the full sort (it does not) run; no
    // two logits tie, so the kept set is unique.
    let logits: Vec<f32> = (0..1000)
        .map(|i| {
            if i % 97 == 0 {
                8.0 - (i / 97) as f32 * 0.5
            } else {
                i as f32 * 1e-3
            }
        })
        .collect();
    for top_p in [0.3, 0.9, 0.999] {
        let params = SamplingParams {
            top_p,
            temperature: 1.0,
            ..Default::default()
        };
        let kept = kept_ids(&logits, &params);
        // Reference: sort everything, keep the prefix reaching top_p.
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = logits.iter().map(|l| (l - max).exp()).sum();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let mut cumulative = 0.0;
        let mut expected = Vec::new();
        for i in order {
            expected.push(i as u32);
            cumulative += (logits[i] - max).exp() / total;
            if cumulative >= top_p {
                break;
            }
        }
        let mut kept_sorted = kept.clone();
        kept_sorted.sort();
        expected.sort();
        assert_eq!(kept_sorted, expected, "top_p {top_p}");
    }
}

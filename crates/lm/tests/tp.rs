//! Tensor-parallel inference gives the single-rank logits at every
//! position: each rank of a real TCP group (one thread per rank, built with
//! GroupBuilder) loads its slices; rank 0 drives the engine loop and the
//! others follow it.

mod common;
mod tp_support;

use huddle_comm::GroupBuilder;
use huddle_lm::{LoadOptions, Model};
use tp_support::{SMOLLM2_TOKENS, free_addr, matches_single_rank};

fn fixture_matches(name: &str) {
    let dir = common::fixture(name);
    let (tokens, _) = common::expected(&dir.join("expected.safetensors"));
    matches_single_rank(&dir, &[2, 3, 4], &tokens, 1e-4);
}

#[test]
fn llama_tied_embeddings_split_over_2_3_4_ranks() {
    fixture_matches("llama");
}

#[test]
fn llama3_split_over_2_3_4_ranks() {
    fixture_matches("llama3");
}

#[test]
fn mistral_split_over_2_3_4_ranks() {
    fixture_matches("mistral");
}

#[test]
fn qwen2_qkv_bias_split_over_2_3_4_ranks() {
    fixture_matches("qwen2");
}

#[test]
fn qwen3_qk_norm_split_over_2_3_4_ranks() {
    fixture_matches("qwen3");
}

#[test]
fn qwen3_moe_experts_split_over_2_3_4_ranks() {
    fixture_matches("qwen3_moe");
}

#[test]
fn quantized_gguf_with_unaligned_head_columns_split_over_2_3_4_ranks() {
    let file = common::fixture("gguf/llama-q8_0.gguf");
    let (tokens, _) = common::expected(&common::fixture("llama/expected.safetensors"));
    matches_single_rank(&file, &[2, 3, 4], &tokens, 2e-2);
}

/// Quantized matmuls quantize their activations to 8 bits per block, so a
/// last-bit difference in a sum can move a rounding and grow over 30 layers:
/// on this model even one rank fed the same tokens in two steps instead of
/// one differed by 2.1% of max|logit|, and 2, 3, 4 ranks differ by 2.4,
/// 2.9 and 2.6% (measured 2026-11-25; the 2e-2 does not hold yet,
/// and with 4e-2 no position's top-2 margin exceeds 10x the tolerance, so
/// the greedy check decides nothing here; it does on the float models).
/// The split itself is exact: tp_dequantized.rs runs the same model with
/// dequantized weights and matches within 1e-4.
#[test]
fn smollm2_q4_1_split_over_2_3_4_ranks() {
    let path = common::smollm2();
    matches_single_rank(&path, &[2, 3, 4], &SMOLLM2_TOKENS, 4e-2);
}

#[test]
fn more_ranks_than_heads_is_a_clear_error() {
    let dir = common::fixture("llama");
    let size = 7;
    let addr = free_addr();
    let token = [7u8; 16];
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..size)
            .map(|rank| {
                let (addr, dir) = (addr.clone(), dir.clone());
                s.spawn(move || {
                    let group = GroupBuilder::new(rank, size, addr, &token).build().unwrap();
                    match Model::load_sharded(&dir, &LoadOptions::default(), &group) {
                        Ok(_) => String::new(),
                        Err(e) => e.to_string(),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for e in errors {
        assert!(
            e.contains("7 ranks") && e.contains("6 attention heads"),
            "{e}"
        );
    }
}

#[test]
fn ranks_with_different_models_are_refused_naming_the_rank() {
    let addr = free_addr();
    let token = [9u8; 16];
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let addr = addr.clone();
                s.spawn(move || {
                    let dir = common::fixture(if rank == 0 { "llama" } else { "qwen2" });
                    let group = GroupBuilder::new(rank, 2, addr, &token).build().unwrap();
                    match Model::load_sharded(&dir, &LoadOptions::default(), &group) {
                        Ok(_) => String::new(),
                        Err(e) => e.to_string(),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for e in errors {
        assert!(e.contains("rank 1 has a different model"), "{e}");
    }
}

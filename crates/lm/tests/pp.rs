//! Pipeline-parallel inference gives exactly the single-rank logits at
//! every position: each stage (one thread, a real TCP group member) runs
//! its layers with the same ops in the same order, so the numbers are
//! bit-identical. Tensor parallelism inside each stage (both axes at once)
//! matches within the tensor-parallel tolerance.

mod common;
mod tp_support;

use std::path::Path;

use candle_core::Tensor;
use huddle_comm::GroupBuilder;
use huddle_lm::{LoadOptions, Model, PipelineSplit, sharded_load};
use tp_support::{SMOLLM2_TOKENS, free_addr, on_ranks, run};

/// [`run`] on a world of `stages * tensor` ranks: stage-major, each stage
/// split over `tensor` ranks. Rank 0 drives, the others follow.
fn split_logits(path: &Path, stages: usize, tensor: usize, tokens: &[u32]) -> (Tensor, Tensor) {
    on_ranks(stages * tensor, tokens, |rank, world| {
        let (stage, t) = ((rank / tensor) as u32, (rank % tensor) as u32);
        let tensor_group = world.split(stage, t).unwrap();
        let pipeline_group = world.split(t, stage).unwrap();
        let model = sharded_load(
            path,
            &LoadOptions::default(),
            &pipeline_group,
            &tensor_group,
        )
        .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        assert_eq!(model.is_leader(), rank == 0);
        model
    })
}

fn assert_identical(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: logit shapes differ");
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let differ = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(differ, 0, "{what}: {differ} logits differ from one rank's");
}

/// Pipelines of each of `stages` give one rank's logits bit for bit, for
/// the whole sequence and after a rewind.
fn pipeline_is_exact(path: &Path, stages: &[usize], tokens: &[u32]) {
    let (want, want_rest) = run(
        &mut Model::load(path, &LoadOptions::default()).unwrap(),
        tokens,
    );
    for &n in stages {
        let (got, got_rest) = split_logits(path, n, 1, tokens);
        let what = format!("{} over {n} stages", path.display());
        assert_identical(&what, &got, &want);
        assert_identical(&format!("{what}, after a rewind"), &got_rest, &want_rest);
    }
}

fn fixture_is_exact(name: &str, stages: &[usize]) {
    let dir = common::fixture(name);
    let (tokens, _) = common::expected(&dir.join("expected.safetensors"));
    pipeline_is_exact(&dir, stages, &tokens);
}

#[test]
fn llama_tied_embeddings_over_2_stages_is_bit_identical() {
    fixture_is_exact("llama", &[2]);
}

#[test]
fn a_stage_with_no_layers_passes_hidden_states_through() {
    // 2 layers over 3 stages: the last stage holds only the norm and head.
    fixture_is_exact("llama", &[3]);
}

#[test]
fn llama3_over_2_stages_is_bit_identical() {
    fixture_is_exact("llama3", &[2]);
}

#[test]
fn mistral_over_2_stages_is_bit_identical() {
    fixture_is_exact("mistral", &[2]);
}

#[test]
fn qwen2_over_2_stages_is_bit_identical() {
    fixture_is_exact("qwen2", &[2]);
}

#[test]
fn qwen3_over_2_stages_is_bit_identical() {
    fixture_is_exact("qwen3", &[2]);
}

#[test]
fn qwen3_moe_over_2_stages_is_bit_identical() {
    fixture_is_exact("qwen3_moe", &[2]);
}

#[test]
fn quantized_gguf_over_2_stages_is_bit_identical() {
    let file = common::fixture("gguf/llama-q8_0.gguf");
    let (tokens, _) = common::expected(&common::fixture("llama/expected.safetensors"));
    pipeline_is_exact(&file, &[2], &tokens);
}

#[test]
fn smollm2_q4_1_over_2_and_3_stages_is_bit_identical() {
    pipeline_is_exact(&common::smollm2(), &[2, 3], &SMOLLM2_TOKENS);
}

/// Both axes at once: 2 stages of 2 tensor ranks each.
fn tensor_inside_stages_matches(path: &Path, tokens: &[u32], tol: f32) {
    let (want, want_rest) = run(
        &mut Model::load(path, &LoadOptions::default()).unwrap(),
        tokens,
    );
    let (got, got_rest) = split_logits(path, 2, 2, tokens);
    let what = format!("{} over 2 stages x 2 tensor ranks", path.display());
    tp_support::assert_matches(&what, (&got, &got_rest), (&want, &want_rest), tol);
}

fn fixture_over_2_stages_of_2_tensor_ranks(name: &str) {
    let dir = common::fixture(name);
    let (tokens, _) = common::expected(&dir.join("expected.safetensors"));
    tensor_inside_stages_matches(&dir, &tokens, 1e-4);
}

#[test]
fn llama_over_2_stages_of_2_tensor_ranks_matches_one_rank() {
    fixture_over_2_stages_of_2_tensor_ranks("llama");
}

#[test]
fn llama3_over_2_stages_of_2_tensor_ranks_matches_one_rank() {
    fixture_over_2_stages_of_2_tensor_ranks("llama3");
}

#[test]
fn mistral_over_2_stages_of_2_tensor_ranks_matches_one_rank() {
    fixture_over_2_stages_of_2_tensor_ranks("mistral");
}

#[test]
fn qwen2_over_2_stages_of_2_tensor_ranks_matches_one_rank() {
    fixture_over_2_stages_of_2_tensor_ranks("qwen2");
}

#[test]
fn qwen3_over_2_stages_of_2_tensor_ranks_matches_one_rank() {
    fixture_over_2_stages_of_2_tensor_ranks("qwen3");
}

#[test]
fn qwen3_moe_over_2_stages_of_2_tensor_ranks_matches_one_rank() {
    fixture_over_2_stages_of_2_tensor_ranks("qwen3_moe");
}

#[test]
fn quantized_gguf_over_2_stages_of_2_tensor_ranks_matches_one_rank() {
    let file = common::fixture("gguf/llama-q8_0.gguf");
    let (tokens, _) = common::expected(&common::fixture("llama/expected.safetensors"));
    tensor_inside_stages_matches(&file, &tokens, 2e-2);
}

/// The quantized tolerance as in tp.rs (see there for why).
#[test]
fn smollm2_q4_1_over_2_stages_of_2_tensor_ranks_matches_one_rank() {
    tensor_inside_stages_matches(&common::smollm2(), &SMOLLM2_TOKENS, 4e-2);
}

/// Layers apportioned unevenly by hand run the same ops in the same order.
#[test]
fn uneven_explicit_stages_are_bit_identical() {
    let path = common::smollm2();
    let opts = LoadOptions::default();
    let mut one = Model::load(&path, &opts).unwrap();
    let layers = one.info().num_layers;
    let (want, want_rest) = run(&mut one, &SMOLLM2_TOKENS);
    let (got, got_rest) = on_ranks(2, &SMOLLM2_TOKENS, |rank, world| {
        let opts = LoadOptions {
            pipeline_split: PipelineSplit::Layers(vec![4, layers - 4]),
            ..LoadOptions::default()
        };
        let model = sharded_load(&path, &opts, &world, &huddle_comm::Group::single()).unwrap();
        let expect = if rank == 0 { 0..4 } else { 4..layers };
        assert_eq!(model.layers(), expect, "rank {rank}");
        model
    });
    assert_identical("SmolLM2 over stages of 4 and 26 layers", &got, &want);
    assert_identical("SmolLM2 over 4 + 26, after a rewind", &got_rest, &want_rest);
}

#[test]
fn a_following_stage_cannot_drive() {
    let dir = common::fixture("llama");
    let addr = free_addr();
    let token = [5u8; 16];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let (addr, dir) = (addr.clone(), dir.clone());
                s.spawn(move || {
                    let world = GroupBuilder::new(rank, 2, addr, &token).build().unwrap();
                    let single = huddle_comm::Group::single();
                    let mut model =
                        sharded_load(&dir, &LoadOptions::default(), &world, &single).unwrap();
                    assert_eq!(model.pipeline_rank(), (rank, 2));
                    if rank == 1 {
                        let err = model.forward(&[1, 2], huddle_lm::Logits::Last).unwrap_err();
                        assert!(err.to_string().contains("rank 1"), "{err}");
                        model.follow().unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

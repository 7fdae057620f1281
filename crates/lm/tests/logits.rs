//! Logits of every supported family against reference logits (mlx-lm,
//! float32) at every position of a 33-token prompt: from Hugging Face
//! directories, from GGUF files, through the KV cache in pieces, and with
//! load-time quantization. Plus the real SmolLM2 GGUF.
//!
//! Tolerances, relative to max|expected logit|:
//! - f32/f16/bf16 weights: 1e-3. We compute in f32 from the same stored
//!   values as the reference, so only summation order differs.
//! - GGUF Q8_0 (reference: f32 logits of the dequantized weights): 5e-2,
//!   because candle's Q8_0 matmul also quantizes the activations to 8 bits.
//! - `--quantize q8` of float weights (reference: the float model): 5e-2
//!   for the same reason plus the weight rounding.

mod common;

use candle_core::Tensor;
use common::{assert_close, expected, fixture, fixtures, smollm2};
use huddle_lm::{LoadOptions, Logits, Model, Quantize};

const FLOAT_TOL: f32 = 1e-3;
const Q8_TOL: f32 = 5e-2;

fn load(path: &std::path::Path, opts: &LoadOptions) -> Model {
    Model::load(path, opts).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn all_logits_match(name: &str) {
    let dir = fixture(name);
    let (tokens, want) = expected(&dir.join("expected.safetensors"));
    let mut model = load(&dir, &LoadOptions::default());
    let got = model.forward(&tokens, Logits::All).unwrap();
    assert_close(name, &got, &want, FLOAT_TOL);
    assert_eq!(model.kv_len(), tokens.len());
}

/// The prompt fed as 13 tokens, then 1, then the rest: every piece must
/// see the cache of the ones before.
fn pieces_match(name: &str) {
    let dir = fixture(name);
    let (tokens, want) = expected(&dir.join("expected.safetensors"));
    let mut model = load(&dir, &LoadOptions::default());
    let a = model.forward(&tokens[..13], Logits::All).unwrap();
    let b = model.forward(&tokens[13..14], Logits::All).unwrap();
    let c = model.forward(&tokens[14..], Logits::All).unwrap();
    let got = Tensor::cat(&[a, b, c], 0).unwrap();
    assert_close(&format!("{name} in pieces"), &got, &want, FLOAT_TOL);
}

#[test]
fn llama_logits_match_reference() {
    all_logits_match("llama");
}

#[test]
fn llama3_rope_scaling_and_split_weights_match_reference() {
    all_logits_match("llama3");
}

#[test]
fn mistral_f16_logits_match_reference() {
    all_logits_match("mistral");
}

#[test]
fn qwen2_bf16_with_qkv_bias_matches_reference() {
    all_logits_match("qwen2");
}

#[test]
fn qwen3_qk_norm_and_yarn_match_reference() {
    all_logits_match("qwen3");
}

#[test]
fn qwen3_moe_matches_reference() {
    all_logits_match("qwen3_moe");
}

#[test]
fn llama_prompt_in_pieces_matches_one_pass() {
    pieces_match("llama");
}

#[test]
fn qwen3_prompt_in_pieces_matches_one_pass() {
    pieces_match("qwen3");
}

#[test]
fn qwen3_moe_prompt_in_pieces_matches_one_pass() {
    pieces_match("qwen3_moe");
}

#[test]
fn last_logits_equal_last_row_of_all() {
    let dir = fixture("qwen2");
    let (tokens, want) = expected(&dir.join("expected.safetensors"));
    let mut model = load(&dir, &LoadOptions::default());
    let last = model.forward(&tokens, Logits::Last).unwrap();
    assert_eq!(last.dims(), &[512]);
    let want_last = want.get(tokens.len() - 1).unwrap();
    assert_close("qwen2 last", &last, &want_last, FLOAT_TOL);
}

#[test]
fn truncate_kv_then_refeed_reproduces_logits() {
    let dir = fixture("llama3");
    let (tokens, want) = expected(&dir.join("expected.safetensors"));
    let mut model = load(&dir, &LoadOptions::default());
    model.forward(&tokens, Logits::Last).unwrap();
    model.truncate_kv(20);
    assert_eq!(model.kv_len(), 20);
    let got = model.forward(&tokens[20..], Logits::All).unwrap();
    assert_close(
        "llama3 after truncate",
        &got,
        &want.narrow(0, 20, tokens.len() - 20).unwrap(),
        FLOAT_TOL,
    );
    model.truncate_kv(0);
    let got = model.forward(&tokens, Logits::All).unwrap();
    assert_close("llama3 after reset", &got, &want, FLOAT_TOL);
}

#[test]
fn bounded_kv_cache_is_exact_until_full() {
    let dir = fixture("llama");
    let (tokens, want) = expected(&dir.join("expected.safetensors"));
    let opts = LoadOptions {
        max_kv_size: Some(tokens.len()),
        ..Default::default()
    };
    let mut model = load(&dir, &opts);
    let mut rows = Vec::new();
    for &t in &tokens {
        rows.push(model.forward(&[t], Logits::All).unwrap());
    }
    let got = Tensor::cat(&rows, 0).unwrap();
    assert_close(
        "llama token by token, bounded cache",
        &got,
        &want,
        FLOAT_TOL,
    );
    // Past the bound the cache rotates; generation goes on with finite logits.
    let more = model.forward(&tokens[..5], Logits::All).unwrap();
    let next = model.forward(&[tokens[0]], Logits::Last).unwrap();
    for t in [more, next] {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
    }
    assert_eq!(model.kv_len(), tokens.len() + 6);
}

#[test]
fn prompt_longer_than_bounded_cache_still_attends_to_all_of_itself() {
    // One pass over 33 tokens with room for 12: every query sees its whole
    // prefix (a temporary concatenation); only then is the cache trimmed.
    let dir = fixture("qwen3_moe");
    let (tokens, want) = expected(&dir.join("expected.safetensors"));
    let opts = LoadOptions {
        max_kv_size: Some(12),
        ..Default::default()
    };
    let mut model = load(&dir, &opts);
    let got = model.forward(&tokens, Logits::All).unwrap();
    assert_close(
        "qwen3_moe, prompt over a 12-entry cache",
        &got,
        &want,
        FLOAT_TOL,
    );
    assert_eq!(model.kv_len(), tokens.len());
}

#[test]
fn sliding_window_of_one_makes_each_position_independent() {
    // With a window of 1 every token attends only to itself, so position
    // i's logits equal those of token i run alone.
    let tmp = tempdir("window");
    copy_dir(&fixture("mistral"), &tmp);
    let cfg = tmp.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"sliding_window\": null", "\"sliding_window\": 1"),
    )
    .unwrap();
    let (tokens, _) = expected(&tmp.join("expected.safetensors"));
    let mut windowed = load(&tmp, &LoadOptions::default());
    let got = windowed.forward(&tokens[..6], Logits::All).unwrap();
    let mut alone = load(&tmp, &LoadOptions::default());
    for (i, &t) in tokens[..6].iter().enumerate() {
        alone.truncate_kv(0);
        let want = alone.forward(&[t], Logits::Last).unwrap();
        assert_close(
            &format!("window 1, position {i}"),
            &got.get(i).unwrap(),
            &want,
            FLOAT_TOL,
        );
    }
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn gguf_files_match_reference() {
    let dir = fixtures().join("gguf");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("gguf/manifest.json")).unwrap())
            .unwrap();
    let files = manifest["files"].as_array().unwrap();
    assert!(files.len() >= 5);
    for entry in files {
        let file = entry["file"].as_str().unwrap();
        let (tokens, want) = expected(&dir.join(entry["expected"].as_str().unwrap()));
        let mut model = load(&dir.join(file), &LoadOptions::default());
        let got = model.forward(&tokens, Logits::All).unwrap();
        let tol = if file.contains("q8_0") {
            Q8_TOL
        } else {
            FLOAT_TOL
        };
        assert_close(file, &got, &want, tol);
        // And through the cache in two pieces.
        model.truncate_kv(0);
        let a = model.forward(&tokens[..17], Logits::All).unwrap();
        let b = model.forward(&tokens[17..], Logits::All).unwrap();
        assert_close(
            &format!("{file} in pieces"),
            &Tensor::cat(&[a, b], 0).unwrap(),
            &want,
            tol,
        );
    }
}

#[test]
fn quantize_q8_at_load_stays_close_to_float() {
    for name in ["llama", "qwen3_moe"] {
        let dir = fixture(name);
        let (tokens, want) = expected(&dir.join("expected.safetensors"));
        let opts = LoadOptions {
            quantize: Some(Quantize::Q8),
            ..Default::default()
        };
        let mut model = load(&dir, &opts);
        let got = model.forward(&tokens, Logits::All).unwrap();
        assert_close(&format!("{name} --quantize q8"), &got, &want, Q8_TOL);
    }
}

#[test]
fn quantize_q8_applies_to_float_gguf_weights_too() {
    let (tokens, want) = expected(&fixture("llama/expected.safetensors"));
    let opts = LoadOptions {
        quantize: Some(Quantize::Q8),
        ..Default::default()
    };
    let mut model = load(&fixture("gguf/llama-f32.gguf"), &opts);
    let got = model.forward(&tokens, Logits::All).unwrap();
    assert_close("llama-f32.gguf --quantize q8", &got, &want, Q8_TOL);
    let (d, _) = common::diff(&got, &want);
    assert!(
        d > 1e-4,
        "q8 logits equal float ones: weights were not quantized"
    );
}

#[test]
fn progress_bar_option_loads_the_same_model() {
    let dir = fixture("qwen2");
    let (tokens, want) = expected(&dir.join("expected.safetensors"));
    let opts = LoadOptions {
        progress: true,
        ..Default::default()
    };
    let mut model = load(&dir, &opts);
    let got = model.forward(&tokens, Logits::All).unwrap();
    assert_close("qwen2 with progress bar", &got, &want, FLOAT_TOL);
}

#[test]
fn model_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Model>();
}

#[test]
fn quantize_q4_at_load_runs_and_roughly_agrees() {
    let dir = fixture("llama");
    let (tokens, want) = expected(&dir.join("expected.safetensors"));
    let opts = LoadOptions {
        quantize: Some(Quantize::Q4),
        ..Default::default()
    };
    let mut model = load(&dir, &opts);
    let got = model.forward(&tokens, Logits::All).unwrap();
    assert_close("llama --quantize q4", &got, &want, 0.3);
}

#[test]
fn eos_ids_come_from_generation_config() {
    let model = load(&fixture("llama3"), &LoadOptions::default());
    assert_eq!(model.info().eos_token_ids, vec![2, 0]);
    assert_eq!(model.info().architecture, "llama");
    assert_eq!(model.info().vocab_size, 512);
    assert_eq!(model.info().context_length, 256);
    assert_eq!(model.info().num_layers, 2);
}

#[test]
fn smollm2_gguf_loads_and_greedy_next_token_is_deterministic() {
    let path = smollm2();
    let mut model = load(&path, &LoadOptions::default());
    let info = model.info().clone();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.num_layers, 30);
    assert_eq!((info.num_heads, info.num_kv_heads), (9, 3));
    assert!(!info.eos_token_ids.is_empty());
    // A short ChatML-shaped prompt of SmolLM2 token ids (1 = <|im_start|>,
    // 2 = <|im_end|>, 198 = newline).
    let prompt = [
        1u32, 4093, 198, 1780, 314, 216, 34, 31, 34, 47, 2, 198, 1, 520, 9531, 198,
    ];
    let last = model.forward(&prompt, Logits::Last).unwrap();
    assert_eq!(last.dims(), &[info.vocab_size]);
    let v = last.to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite()), "non-finite logits");
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap()
    };
    let first = argmax(&v);
    // Same prompt again, after a reset and in two pieces: same token.
    model.truncate_kv(0);
    model.forward(&prompt[..7], Logits::Last).unwrap();
    let again = model
        .forward(&prompt[7..], Logits::Last)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(argmax(&again), first);
    let max_diff = v
        .iter()
        .zip(&again)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-2, "logits moved by {max_diff} between runs");
    eprintln!("smollm2 greedy next token: {first}");
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("huddle-lm-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

//! Prompt and decode speed of a model, and how far a prompt fed in pieces
//! drifts from the same prompt in one pass.
//!
//! cargo run --release -p huddle-lm --example prompt_speed -- MODEL.gguf [--threads N] [--prompt 512] [--decode 64] [--repeats 3]
//!
//! Prints the median and best prompt tokens/s over repeats, the median
//! decode tokens/s, and the largest logit difference between the prompt
//! in one pass and in pieces (13 tokens, 1 token, the rest).

use std::time::Instant;

use huddle_lm::{LoadOptions, Logits, Model};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or(
        "usage: prompt_speed MODEL [--threads N] [--prompt 512] [--decode 64] [--repeats 3]",
    )?;
    let num = |name: &str, default: usize| -> Result<usize> {
        Ok(match arg(&args, name) {
            Some(v) => v.parse()?,
            None => default,
        })
    };
    let threads = arg(&args, "--threads")
        .map(|v| v.parse::<usize>())
        .transpose()?;
    let (prompt_len, decode, repeats) = (
        num("--prompt", 512)?,
        num("--decode", 64)?,
        num("--repeats", 3)?.max(1),
    );
    // SAFETY: first thing in main, before any other thread exists.
    let threads = unsafe { huddle_lm::threads::configure_cpu_threads(threads)? };
    let mut model = Model::load(std::path::Path::new(path), &LoadOptions::default())?;
    let vocab = model.info().vocab_size as u32;
    // Deterministic, varied ids away from the special tokens.
    let tokens: Vec<u32> = (0..prompt_len as u32)
        .map(|i| 100 + (i * 7919 + 13) % (vocab.min(30000) - 100))
        .collect();
    let mut prompt_rates = Vec::new();
    let mut decode_rates = Vec::new();
    for _ in 0..repeats {
        model.truncate_kv(0);
        let start = Instant::now();
        let logits = model.forward(&tokens, Logits::Last)?;
        prompt_rates.push(prompt_len as f64 / start.elapsed().as_secs_f64());
        let mut next = argmax(&logits.to_vec1::<f32>()?);
        let start = Instant::now();
        for _ in 0..decode {
            next = argmax(&model.forward(&[next], Logits::Last)?.to_vec1::<f32>()?);
        }
        decode_rates.push(decode as f64 / start.elapsed().as_secs_f64());
    }
    let best = prompt_rates.iter().copied().fold(0f64, f64::max);
    println!(
        "threads {threads}: prompt {prompt_len} tokens: median {:.1} tok/s, best {best:.1}; decode {decode}: median {:.1} tok/s",
        median(&mut prompt_rates),
        median(&mut decode_rates),
    );
    let n = prompt_len.min(64);
    if n > 14 {
        model.truncate_kv(0);
        let whole = model.forward(&tokens[..n], Logits::All)?.to_vec2::<f32>()?;
        model.truncate_kv(0);
        let mut pieces = model
            .forward(&tokens[..13], Logits::All)?
            .to_vec2::<f32>()?;
        pieces.extend(
            model
                .forward(&tokens[13..14], Logits::All)?
                .to_vec2::<f32>()?,
        );
        pieces.extend(
            model
                .forward(&tokens[14..n], Logits::All)?
                .to_vec2::<f32>()?,
        );
        let drift = whole
            .iter()
            .flatten()
            .zip(pieces.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("prompt of {n} in pieces (13, 1, rest) vs one pass: max |logit diff| {drift:e}");
    }
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

//! `huddle bench generate`: prompt and generation speed measured the way
//! llama-bench measures them, so the two print comparable numbers.
//!
//! Prompt: one batched pass over N fixed token ids (no text, no tokenizer
//! work), timed to the first greedy token. Generation: N more tokens fed
//! one at a time after that prompt, greedy, EOS ignored. Each repetition
//! starts from an empty KV cache; an untimed warm-up (the prompt and one
//! decode step) comes first (page faults, allocator, thread pool). Under `huddle launch` the
//! model is split as `huddle generate` splits it; rank 0 drives and prints.

use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use huddle_lm::{Logits, Model};
use serde_json::json;

use crate::generate::{self, ModelArgs};

#[derive(Args, Debug)]
pub struct GenerateBenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length: tokens processed in one pass.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub prompt_tokens: usize,
    /// Tokens generated one at a time after the prompt.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub gen_tokens: usize,
    /// Timed repetitions (after one warm-up); medians are reported.
    #[arg(long, default_value_t = 5, value_name = "R")]
    pub reps: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One repetition's speeds.
#[derive(Debug, Clone, Copy)]
struct Rep {
    prompt_tps: f64,
    gen_tps: f64,
}

/// Median, min and max of one measure over the repetitions.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    /// `None` for no values.
    fn of(values: &[f64]) -> Option<Spread> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }
}

pub fn run(args: GenerateBenchArgs) -> anyhow::Result<i32> {
    check_counts(&args)?;
    let mut loaded = generate::load(&args.model)?;
    check_fits(&args, loaded.model.info().context_length)?;
    if let Some(done) = generate::follow_if_not_leader(&mut loaded) {
        let code = done?;
        generate::gather_peak_memory(&loaded.world)?;
        return Ok(code);
    }
    let prompt = prompt_ids(args.prompt_tokens, loaded.model.info().vocab_size);
    // As llama-bench warms up: the whole prompt, but one decode step (a
    // step's buffers do not grow with the number of steps).
    time_rep(&mut loaded.model, &prompt, 1).context("warm-up")?;
    let mut reps = Vec::with_capacity(args.reps);
    for rep in 1..=args.reps {
        let measured = time_rep(&mut loaded.model, &prompt, args.gen_tokens)
            .with_context(|| format!("repetition {rep}"))?;
        reps.push(measured);
    }
    let report = Report::new(&args, &loaded.model, &reps)?;
    let generate::Loaded { model, world, .. } = loaded;
    // Dropping the model releases the followers into the gather.
    drop(model);
    let peaks = if world.size() > 1 {
        generate::gather_peak_memory(&world)?
    } else {
        vec![generate::peak_memory_gb().unwrap_or(-1.0)]
    };
    if args.json {
        println!("{}", report.json(&peaks));
    } else {
        print!("{}", report.text(&peaks));
    }
    Ok(0)
}

fn check_counts(args: &GenerateBenchArgs) -> anyhow::Result<()> {
    if args.prompt_tokens == 0 {
        bail!("--prompt-tokens must be at least 1");
    }
    if args.gen_tokens == 0 {
        bail!("--gen-tokens must be at least 1");
    }
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    Ok(())
}

/// Checked on every rank, so all of them stop rather than rank 0 alone.
fn check_fits(args: &GenerateBenchArgs, context: usize) -> anyhow::Result<()> {
    let needed = args.prompt_tokens + args.gen_tokens;
    if context > 0 && needed > context {
        bail!(
            "--prompt-tokens {} + --gen-tokens {} = {needed} positions, more than the model's context of {context}",
            args.prompt_tokens,
            args.gen_tokens
        );
    }
    if let Some(max) = args.model.max_kv_size
        && needed > max
    {
        bail!("{needed} positions do not fit --max-kv-size {max}");
    }
    Ok(())
}

/// A fixed token sequence spread over the vocabulary: any model can run it
/// without a text, and every run sees the same ids.
fn prompt_ids(n: usize, vocab: usize) -> Vec<u32> {
    let vocab = vocab.max(1) as u64;
    (0..n as u64)
        // 7919 is prime, so the ids cycle through the whole vocabulary.
        .map(|i| ((i * 7919 + 17) % vocab) as u32)
        .collect()
}

fn time_rep(model: &mut Model, prompt: &[u32], gen_tokens: usize) -> anyhow::Result<Rep> {
    model.truncate_kv(0);
    let start = Instant::now();
    let mut next = greedy_step(model, prompt)?;
    let prompt_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..gen_tokens {
        next = greedy_step(model, &[next])?;
    }
    let gen_secs = start.elapsed().as_secs_f64();
    Ok(Rep {
        prompt_tps: prompt.len() as f64 / prompt_secs,
        gen_tps: gen_tokens as f64 / gen_secs,
    })
}

/// Runs `tokens` and returns the most likely next id, as greedy
/// generation does (the model picks it: `Logits::Argmax`).
fn greedy_step(model: &mut Model, tokens: &[u32]) -> anyhow::Result<u32> {
    let id = model.forward(tokens, Logits::Argmax)?;
    let id = id.to_vec1::<u32>().context("reading the greedy token")?;
    id.first().copied().context("no greedy token")
}

/// What rank 0 measured, ready to print.
struct Report {
    model: String,
    architecture: String,
    threads: Option<usize>,
    world_size: usize,
    mode: &'static str,
    prompt_tokens: usize,
    gen_tokens: usize,
    reps: Vec<Rep>,
    prompt: Spread,
    generation: Spread,
}

impl Report {
    fn new(args: &GenerateBenchArgs, model: &Model, reps: &[Rep]) -> anyhow::Result<Report> {
        let (_, stages) = model.pipeline_rank();
        let (_, tensor) = model.tensor_rank();
        let prompt: Vec<f64> = reps.iter().map(|r| r.prompt_tps).collect();
        let generation: Vec<f64> = reps.iter().map(|r| r.gen_tps).collect();
        let (Some(prompt), Some(generation)) = (Spread::of(&prompt), Spread::of(&generation))
        else {
            bail!("no timed repetitions");
        };
        Ok(Report {
            model: args.model.model.display().to_string(),
            architecture: model.info().architecture.clone(),
            threads: huddle_lm::threads::configured_threads(),
            world_size: stages * tensor,
            mode: mode(stages, tensor),
            prompt_tokens: args.prompt_tokens,
            gen_tokens: args.gen_tokens,
            reps: reps.to_vec(),
            prompt,
            generation,
        })
    }

    fn json(&self, peaks: &[f64]) -> serde_json::Value {
        let spread = |s: &Spread, runs: Vec<f64>| json!({ "median": s.median, "min": s.min, "max": s.max, "runs": runs });
        json!({
            "model": self.model,
            "architecture": self.architecture,
            "threads": self.threads,
            "world_size": self.world_size,
            "mode": self.mode,
            "prompt_tokens": self.prompt_tokens,
            "gen_tokens": self.gen_tokens,
            "reps": self.reps.len(),
            "prompt_tokens_per_sec":
                spread(&self.prompt, self.reps.iter().map(|r| r.prompt_tps).collect()),
            "generation_tokens_per_sec":
                spread(&self.generation, self.reps.iter().map(|r| r.gen_tps).collect()),
            // null where a rank could not read its own.
            "peak_memory_gb": peaks.iter().map(|&gb| (gb >= 0.0).then_some(gb)).collect::<Vec<_>>(),
        })
    }

    fn text(&self, peaks: &[f64]) -> String {
        let threads = self
            .threads
            .map_or_else(|| "default".to_string(), |t| t.to_string());
        let line = |what: &str, tokens: usize, s: &Spread| {
            format!(
                "{what:<10} {tokens:>5} tokens: {:>9.2} tok/s median (min {:.2}, max {:.2})\n",
                s.median, s.min, s.max
            )
        };
        let memory: Vec<String> = peaks
            .iter()
            .enumerate()
            .map(|(rank, &gb)| match (peaks.len(), gb >= 0.0) {
                (_, false) => format!("rank {rank} unknown"),
                (1, true) => format!("{gb:.3} GB"),
                (_, true) => format!("rank {rank} {gb:.3} GB"),
            })
            .collect();
        format!(
            "{} ({}), {} rank{} ({}), {threads} threads per rank, {} runs after a warm-up\n{}{}Peak memory: {}\n",
            self.model,
            self.architecture,
            self.world_size,
            if self.world_size == 1 { "" } else { "s" },
            self.mode,
            self.reps.len(),
            line("prompt", self.prompt_tokens, &self.prompt),
            line("generation", self.gen_tokens, &self.generation),
            memory.join(", ")
        )
    }
}

fn mode(stages: usize, tensor: usize) -> &'static str {
    match (stages > 1, tensor > 1) {
        (false, false) => "single",
        (false, true) => "tensor",
        (true, false) => "pipeline",
        (true, true) => "pipeline+tensor",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_count_takes_the_middle() {
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Some(Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
    }

    #[test]
    fn spread_of_even_count_averages_the_middle_two() {
        let s = Spread::of(&[4.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 10.0));
    }

    #[test]
    fn spread_of_nothing_is_none() {
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn prompt_ids_stay_inside_the_vocabulary_and_vary() {
        let ids = prompt_ids(1000, 512);
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|&id| id < 512));
        assert!(ids.windows(2).all(|w| w[0] != w[1]));
        assert_eq!(ids, prompt_ids(1000, 512));
    }

    #[test]
    fn mode_names_each_split() {
        assert_eq!(mode(1, 1), "single");
        assert_eq!(mode(1, 2), "tensor");
        assert_eq!(mode(2, 1), "pipeline");
        assert_eq!(mode(2, 2), "pipeline+tensor");
    }
}

//! `huddle generate`: one prompt in, streamed text out, then mlx_lm-style
//! speed and memory numbers on stderr.

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use huddle_comm::Group;
use huddle_lm::generate::{GenerateOptions, Generation, encode_chat, encode_plain, stop_token_ids};
use huddle_lm::sampling::SamplingParams;
use huddle_lm::{ChatTemplate, LoadOptions, Message, Model, Quantize, Tokenizer};

/// Which model to load and how.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Bound on the KV cache (entries per layer).
    #[arg(long, value_name = "N")]
    pub max_kv_size: Option<usize>,
    /// Quantize float weights while loading.
    #[arg(long, value_enum)]
    pub quantize: Option<QuantizeArg>,
    /// CPU threads (default: the CPUs this process may use, shared among
    /// the ranks on this host).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Split the model's layers among the job's ranks (one contiguous
    /// range each, activations passed along) instead of splitting every
    /// layer's weights (tensor parallelism, the default).
    #[arg(long)]
    pub pipeline: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum QuantizeArg {
    Q8,
    Q4,
}

/// How to sample and when to stop.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Maximum number of tokens to generate.
    #[arg(long, short = 'm', default_value_t = 256, value_name = "N")]
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub temp: f32,
    /// Nucleus sampling: keep the most likely tokens up to this total probability.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub top_k: usize,
    /// Drop tokens less likely than P times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub min_p: f32,
    /// Penalty for repeating recent tokens (1 = off).
    #[arg(long, default_value_t = 1.0, value_name = "R")]
    pub repetition_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub repetition_context_size: usize,
    /// Seed for reproducible sampling.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long, value_name = "STR")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temp,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            repetition_context: self.repetition_context_size,
            seed: self.seed,
        }
    }
}

#[derive(Args, Debug)]
// `--temp -1` should reach the range check, not be taken for a flag.
#[command(allow_negative_numbers = true)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt ("-" reads it from stdin).
    #[arg(long, short = 'p', value_name = "TEXT")]
    pub prompt: String,
    /// A system message before the prompt.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Send the prompt as is, without the model's chat template.
    #[arg(long)]
    pub ignore_chat_template: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// A loaded model with its tokenizer.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// Every rank of the job.
    pub world: Group,
}

/// Sets the thread budget, joins the job's ranks (when started by `huddle
/// launch`: they form one tensor-parallel group, or with `--pipeline` one
/// pipeline), then loads the tokenizer and this rank's part of the model.
pub fn load(args: &ModelArgs) -> anyhow::Result<Loaded> {
    // SAFETY: called first thing in a subcommand, from the main thread,
    // before candle or anything else in this process has started threads.
    unsafe { huddle_lm::threads::configure_cpu_threads(args.threads) }?;
    let group = huddle_comm::init().context("joining the other ranks")?;
    let path = &args.model;
    if !path.exists() {
        anyhow::bail!("{}: no such file or directory", path.display());
    }
    let tokenizer = Tokenizer::load(path)
        .with_context(|| format!("loading the tokenizer of {}", path.display()))?;
    let options = LoadOptions {
        quantize: args.quantize.map(|q| match q {
            QuantizeArg::Q8 => Quantize::Q8,
            QuantizeArg::Q4 => Quantize::Q4,
        }),
        max_kv_size: args.max_kv_size,
        progress: group.rank() == 0 && std::io::stderr().is_terminal(),
    };
    let model = if args.pipeline {
        huddle_lm::sharded_load(path, &options, &group, &Group::single())
    } else {
        Model::load_sharded(path, &options, &group)
    }
    .with_context(|| format!("loading {}", path.display()))?;
    tracing::info!(
        architecture = %model.info().architecture,
        layers = model.info().num_layers,
        context = model.info().context_length,
        "model loaded"
    );
    Ok(Loaded {
        model,
        tokenizer,
        world: group,
    })
}

/// The model's chat template, or the plain fallback with a note.
pub fn chat_template(tokenizer: &Tokenizer, model: &Path) -> anyhow::Result<ChatTemplate> {
    let template = ChatTemplate::for_tokenizer(tokenizer)
        .with_context(|| format!("chat template of {}", model.display()))?;
    if template.is_fallback() {
        eprintln!(
            "huddle: note: {} has no chat template; using a plain \"User:/Assistant:\" format",
            model.display()
        );
    }
    Ok(template)
}

/// Generation options: the user's sampling and stops plus every token and
/// string that ends the model's turn.
pub fn generate_options(
    sampling: &SamplingArgs,
    loaded: &Loaded,
    template: Option<&ChatTemplate>,
) -> GenerateOptions {
    let mut stop_strings = sampling.stop.clone();
    stop_strings.extend(template.map(ChatTemplate::stop_strings).unwrap_or_default());
    GenerateOptions {
        max_tokens: sampling.max_tokens,
        sampling: sampling.params(),
        stop_strings,
        eos_token_ids: stop_token_ids(loaded.model.info(), &loaded.tokenizer, template),
        skip_special_tokens: true,
    }
}

/// Writes streamed text to stdout; a closed stdout (`| head`) stops
/// generation instead of failing it.
pub fn stdout_sink() -> impl FnMut(&str) -> ControlFlow<()> {
    let stdout = std::io::stdout();
    move |text: &str| {
        let mut out = stdout.lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }
}

/// On a rank other than 0 of a split model: runs the steps rank 0
/// announces until it is done. `None` on rank 0, which goes on to drive.
pub fn follow_if_not_leader(loaded: &mut Loaded) -> Option<anyhow::Result<i32>> {
    if loaded.model.is_leader() {
        return None;
    }
    let rank = loaded.world.rank();
    Some(
        loaded
            .model
            .follow()
            .map(|()| 0)
            .with_context(|| format!("rank {rank} following rank 0")),
    )
}

pub fn run(args: GenerateArgs) -> anyhow::Result<i32> {
    let mut loaded = load(&args.model)?;
    if let Some(done) = follow_if_not_leader(&mut loaded) {
        let code = done?;
        gather_peak_memory(&loaded.world)?;
        return Ok(code);
    }
    // Only rank 0 gets the launcher's stdin.
    let prompt = if args.prompt == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the prompt from stdin")?
    } else {
        args.prompt.clone()
    };
    let template = if args.ignore_chat_template {
        None
    } else {
        Some(chat_template(&loaded.tokenizer, &args.model.model)?)
    };
    let tokens = match &template {
        Some(template) => {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(Message::system(system.clone()));
            }
            messages.push(Message::user(prompt));
            encode_chat(&loaded.tokenizer, template, &messages)?
        }
        None => encode_plain(&loaded.tokenizer, &prompt)?,
    };
    tracing::debug!(?tokens, "prompt tokens");
    let options = generate_options(&args.sampling, &loaded, template.as_ref());
    let mut sink = stdout_sink();
    let generation = huddle_lm::generate(
        &mut loaded.model,
        &loaded.tokenizer,
        &tokens,
        &options,
        &mut sink,
    )?;
    // The newline ends the text even when stdout is already closed.
    let _ = writeln!(std::io::stdout());
    tracing::info!(finish = ?generation.finish, "generation ended");
    print_speed(&generation);
    if loaded.world.size() <= 1 {
        print_peak_memory();
        return Ok(0);
    }
    let Loaded { model, world, .. } = loaded;
    // Dropping the model releases the followers into the gather.
    drop(model);
    let peaks = gather_peak_memory(&world)?;
    eprintln!("{}", peak_memory_line(&peaks));
    Ok(0)
}

/// mlx_lm's summary lines, on stderr so stdout holds only the text.
pub fn print_stats(generation: &Generation) {
    print_speed(generation);
    print_peak_memory();
}

/// Every rank's peak resident memory in GB, in rank order (negative where
/// a rank could not read it).
fn gather_peak_memory(world: &Group) -> anyhow::Result<Vec<f64>> {
    let mine = [peak_memory_gb().unwrap_or(-1.0)];
    let mut all = vec![0f64; world.size()];
    world
        .all_gather(&mine, &mut all)
        .context("gathering the ranks' peak memory")?;
    Ok(all)
}

fn peak_memory_line(peaks: &[f64]) -> String {
    let ranks: Vec<String> = peaks
        .iter()
        .enumerate()
        .map(|(rank, &gb)| {
            if gb < 0.0 {
                format!("rank {rank} unknown")
            } else {
                format!("rank {rank} {gb:.2} GB")
            }
        })
        .collect();
    format!("Peak memory: {}", ranks.join(", "))
}

fn print_peak_memory() {
    match peak_memory_gb() {
        Some(gb) => eprintln!("Peak memory: {gb:.3} GB"),
        None => eprintln!("Peak memory: unknown"),
    }
}

fn print_speed(generation: &Generation) {
    let stats = &generation.stats;
    eprintln!("==========");
    eprintln!(
        "Prompt: {} tokens, {:.3} tokens-per-sec",
        stats.prompt_tokens,
        stats.prompt_tokens_per_sec()
    );
    eprintln!(
        "Generation: {} tokens, {:.3} tokens-per-sec",
        stats.generated_tokens,
        stats.generation_tokens_per_sec()
    );
}

/// The process's peak resident memory (VmHWM) in GB.
pub fn peak_memory_gb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024.0 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_memory_line_names_every_rank() {
        assert_eq!(
            peak_memory_line(&[0.2134, 0.2, -1.0]),
            "Peak memory: rank 0 0.21 GB, rank 1 0.20 GB, rank 2 unknown"
        );
    }
}

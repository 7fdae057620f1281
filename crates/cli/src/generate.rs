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
use huddle_lm::{
    ChatTemplate, CommStats, LoadOptions, Message, Model, PipelineSplit, Quantize, Tokenizer,
    TpReduce,
};

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
    /// Ranks splitting each pipeline stage's weights (tensor parallelism
    /// inside stages): with --pipeline and 4 ranks, 2 gives 2 stages of 2
    /// ranks. Without --pipeline it must be the job's rank count.
    #[arg(long, value_name = "N")]
    pub tensor_parallel: Option<usize>,
    /// How --pipeline sizes its stages: by each host's free memory (even
    /// when the hosts' free memory is within 10%), or evenly.
    #[arg(long, value_enum, default_value_t = SplitArg::Memory, conflicts_with = "layers")]
    pub pipeline_split: SplitArg,
    /// Layers per pipeline stage, in stage order (e.g. 10,20); they must
    /// add up to the model's layers.
    #[arg(long, value_name = "N,N,...", value_delimiter = ',')]
    pub layers: Option<Vec<usize>>,
    /// How tensor-parallel ranks combine the attention output and MLP
    /// down projections of quantized weights: sum (one all_sum per layer,
    /// fastest; logits drift a few % of their range from one rank's) or
    /// gather (two all_gathers per layer; bit-identical to one rank).
    #[arg(long, value_enum, default_value_t = ReduceArg::Sum)]
    pub tp_reduce: ReduceArg,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceArg {
    Sum,
    Gather,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitArg {
    Even,
    Memory,
}

/// How the job's ranks divide the model: `stages` pipeline stages of
/// `tensor` ranks each, stage-major (a stage's ranks are consecutive, so
/// with `--ranks-per-host` equal to `tensor` a stage stays on one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub stages: usize,
    pub tensor: usize,
}

impl ModelArgs {
    /// The layout for a job of `world` ranks, or a one-line reason why
    /// these flags cannot split it.
    pub fn layout(&self, world: usize) -> anyhow::Result<Layout> {
        if !self.pipeline {
            if self.layers.is_some() || self.pipeline_split != SplitArg::Memory {
                anyhow::bail!("--layers and --pipeline-split need --pipeline");
            }
            return match self.tensor_parallel {
                Some(t) if t != world => anyhow::bail!(
                    "--tensor-parallel {t} without --pipeline must equal the job's {world} ranks \
                     (add --pipeline to split the rest into stages)"
                ),
                _ => Ok(Layout {
                    stages: 1,
                    tensor: world,
                }),
            };
        }
        let tensor = self.tensor_parallel.unwrap_or(1);
        if tensor == 0 || tensor > world || !world.is_multiple_of(tensor) {
            anyhow::bail!(
                "--tensor-parallel {tensor} must divide the job's {world} ranks into equal stages"
            );
        }
        Ok(Layout {
            stages: world / tensor,
            tensor,
        })
    }

    fn split(&self) -> PipelineSplit {
        match (&self.layers, self.pipeline_split) {
            (Some(counts), _) => PipelineSplit::Layers(counts.clone()),
            (None, SplitArg::Even) => PipelineSplit::Even,
            (None, SplitArg::Memory) => PipelineSplit::Memory,
        }
    }
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
    /// Testing aid: instead of generating, write the prompt's logits at
    /// every position to FILE (f32 little-endian, one row per token).
    #[arg(long, hide = true, value_name = "FILE")]
    pub dump_logits: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// A loaded model with its tokenizer.
pub struct Loaded {
    pub model: Model,
    /// Rank 0's only: the other ranks follow its steps and never see text
    /// (a 150k vocabulary's tokenizer is ~20 MB a rank).
    pub tokenizer: Option<Tokenizer>,
    /// Every rank of the job.
    pub world: Group,
}

/// [`Loaded::tokenizer`], which rank 0 (the rank that drives) holds.
pub fn leader_tokenizer(tokenizer: &Option<Tokenizer>) -> anyhow::Result<&Tokenizer> {
    tokenizer
        .as_ref()
        .context("only rank 0 holds the tokenizer")
}

/// Sets the thread budget, joins the job's ranks (when started by `huddle
/// launch`: they form one tensor-parallel group, or with `--pipeline` a
/// pipeline, of tensor groups with `--tensor-parallel`), then loads the
/// tokenizer and this rank's part of the model.
pub fn load(args: &ModelArgs) -> anyhow::Result<Loaded> {
    // SAFETY: called first thing in a subcommand, from the main thread,
    // before candle or anything else in this process has started threads.
    unsafe { huddle_lm::threads::configure_cpu_threads(args.threads) }?;
    let group = huddle_comm::init().context("joining the other ranks")?;
    let layout = args.layout(group.size())?;
    let path = &args.model;
    if !path.exists() {
        anyhow::bail!("{}: no such file or directory", path.display());
    }
    let tokenizer = if group.rank() == 0 {
        Some(
            Tokenizer::load(path)
                .with_context(|| format!("loading the tokenizer of {}", path.display()))?,
        )
    } else {
        None
    };
    let options = LoadOptions {
        quantize: args.quantize.map(|q| match q {
            QuantizeArg::Q8 => Quantize::Q8,
            QuantizeArg::Q4 => Quantize::Q4,
        }),
        max_kv_size: args.max_kv_size,
        progress: group.rank() == 0 && std::io::stderr().is_terminal(),
        pipeline_split: args.split(),
        tp_reduce: match args.tp_reduce {
            ReduceArg::Sum => TpReduce::Sum,
            ReduceArg::Gather => TpReduce::Gather,
        },
    };
    let (stage, t) = (group.rank() / layout.tensor, group.rank() % layout.tensor);
    let (pipeline, tensor) = if layout.stages == 1 {
        (Group::single(), group.clone())
    } else if layout.tensor == 1 {
        (group.clone(), Group::single())
    } else {
        let tensor = group
            .split(stage as u32, t as u32)
            .context("forming the tensor groups")?;
        let pipeline = group
            .split(t as u32, stage as u32)
            .context("forming the pipeline groups")?;
        (pipeline, tensor)
    };
    let model = huddle_lm::sharded_load(path, &options, &pipeline, &tensor)
        .with_context(|| format!("loading {}", path.display()))?;
    if group.size() > 1 {
        let layers = model.layers();
        tracing::info!(
            stage,
            tensor_rank = t,
            layers = %format!("{}..{}", layers.start, layers.end),
            "this rank's part"
        );
    }
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
        eos_token_ids: loaded
            .tokenizer
            .as_ref()
            .map(|t| stop_token_ids(loaded.model.info(), t, template))
            .unwrap_or_default(),
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
        gather_rank_reports(&loaded.world, RankReport::of(&loaded.model))?;
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
        Some(chat_template(
            leader_tokenizer(&loaded.tokenizer)?,
            &args.model.model,
        )?)
    };
    let tokens = match &template {
        Some(template) => {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(Message::system(system.clone()));
            }
            messages.push(Message::user(prompt));
            encode_chat(leader_tokenizer(&loaded.tokenizer)?, template, &messages)?
        }
        None => encode_plain(leader_tokenizer(&loaded.tokenizer)?, &prompt)?,
    };
    tracing::debug!(?tokens, "prompt tokens");
    if let Some(path) = &args.dump_logits {
        write_logits(&mut loaded.model, &tokens, path)?;
    } else {
        let options = generate_options(&args.sampling, &loaded, template.as_ref());
        let mut sink = stdout_sink();
        let generation = huddle_lm::generate(
            &mut loaded.model,
            leader_tokenizer(&loaded.tokenizer)?,
            &tokens,
            &options,
            &mut sink,
        )?;
        // The newline ends the text even when stdout is already closed.
        let _ = writeln!(std::io::stdout());
        tracing::info!(finish = ?generation.finish, "generation ended");
        print_speed(&generation);
    }
    if loaded.world.size() <= 1 {
        print_peak_memory();
        return Ok(0);
    }
    let Loaded { model, world, .. } = loaded;
    let mine = RankReport::of(&model);
    // Dropping the model releases the followers into the gather.
    drop(model);
    let reports = gather_rank_reports(&world, mine)?;
    let peaks: Vec<f64> = reports.iter().map(|r| r.peak_gb).collect();
    eprintln!("{}", peak_memory_line(&peaks));
    if tracing::enabled!(tracing::Level::INFO) {
        eprintln!("{}", comm_line(&reports));
    }
    Ok(0)
}

/// The logits of every prompt position, `[tokens, vocab]` little-endian
/// f32 rows, so that runs split differently (across hosts too) can be
/// compared with one rank's.
fn write_logits(model: &mut Model, tokens: &[u32], path: &Path) -> anyhow::Result<()> {
    let logits = model.forward(tokens, huddle_lm::Logits::All)?;
    let values = logits
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .context("reading the logits")?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// What each rank tells rank 0 at the end of a split generation.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RankReport {
    /// VmHWM in GB, negative when unknown.
    peak_gb: f64,
    /// One-token steps run, and their communication.
    decode_steps: u64,
    comm: CommStats,
}

const REPORT_WORDS: usize = 5;

impl RankReport {
    fn of(model: &Model) -> Self {
        let (decode_steps, comm) = model.decode_comm_stats();
        RankReport {
            peak_gb: peak_memory_gb().unwrap_or(-1.0),
            decode_steps,
            comm,
        }
    }

    fn words(&self) -> [f64; REPORT_WORDS] {
        [
            self.peak_gb,
            self.decode_steps as f64,
            self.comm.collectives as f64,
            self.comm.seconds,
            self.comm.bytes_sent as f64,
        ]
    }

    fn from_words(w: &[f64]) -> Self {
        RankReport {
            peak_gb: w[0],
            decode_steps: w[1] as u64,
            comm: CommStats {
                collectives: w[2] as u64,
                seconds: w[3],
                bytes_sent: w[4] as u64,
            },
        }
    }
}

/// Every rank's [`RankReport`], in rank order (collective).
fn gather_rank_reports(world: &Group, mine: RankReport) -> anyhow::Result<Vec<RankReport>> {
    let mut all = vec![0f64; REPORT_WORDS * world.size()];
    world
        .all_gather(&mine.words(), &mut all)
        .context("gathering the ranks' peak memory and communication")?;
    Ok(all
        .chunks_exact(REPORT_WORDS)
        .map(RankReport::from_words)
        .collect())
}

/// Per generated token, each rank's communication: time in it, how many
/// collectives and bytes sent.
fn comm_line(reports: &[RankReport]) -> String {
    let ranks: Vec<String> = reports
        .iter()
        .enumerate()
        .map(|(rank, r)| {
            let n = r.decode_steps.max(1) as f64;
            format!(
                "rank {rank} {:.3} ms, {:.1} collectives, {:.1} KB sent",
                r.comm.seconds * 1e3 / n,
                r.comm.collectives as f64 / n,
                r.comm.bytes_sent as f64 / n / 1e3
            )
        })
        .collect();
    format!("Communication per token: {}", ranks.join("; "))
}

/// mlx_lm's summary lines, on stderr so stdout holds only the text.
pub fn print_stats(generation: &Generation) {
    print_speed(generation);
    print_peak_memory();
}

/// Every rank's peak resident memory in GB, in rank order (negative where
/// a rank could not read it).
pub fn gather_peak_memory(world: &Group) -> anyhow::Result<Vec<f64>> {
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
                format!("rank {rank} {gb:.3} GB")
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

    fn model_args(extra: &[&str]) -> ModelArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            model: ModelArgs,
        }
        let mut argv = vec!["huddle", "--model", "m.gguf"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().model
    }

    #[test]
    fn tensor_parallel_inside_a_pipeline_divides_the_ranks_into_stages() {
        let l = model_args(&["--pipeline", "--tensor-parallel", "2"]).layout(4);
        assert_eq!(
            l.unwrap(),
            Layout {
                stages: 2,
                tensor: 2
            }
        );
        let l = model_args(&["--pipeline"]).layout(3).unwrap();
        assert_eq!(
            l,
            Layout {
                stages: 3,
                tensor: 1
            }
        );
        let l = model_args(&[]).layout(4).unwrap();
        assert_eq!(
            l,
            Layout {
                stages: 1,
                tensor: 4
            }
        );
        let l = model_args(&["--tensor-parallel", "2"]).layout(2).unwrap();
        assert_eq!(
            l,
            Layout {
                stages: 1,
                tensor: 2
            }
        );
    }

    #[test]
    fn impossible_layouts_are_one_line_errors() {
        let e = model_args(&["--pipeline", "--tensor-parallel", "3"]).layout(4);
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("--tensor-parallel 3 must divide the job's 4 ranks"),
            "{e}"
        );
        let e = model_args(&["--pipeline", "--tensor-parallel", "0"]).layout(4);
        assert!(e.is_err());
        let e = model_args(&["--tensor-parallel", "2"])
            .layout(4)
            .unwrap_err();
        assert!(e.to_string().contains("add --pipeline"), "{e}");
        let e = model_args(&["--layers", "1,2"]).layout(2).unwrap_err();
        assert!(e.to_string().contains("need --pipeline"), "{e}");
    }

    #[test]
    fn layer_counts_override_the_memory_split() {
        let a = model_args(&["--pipeline", "--layers", "10,20"]);
        assert_eq!(a.split(), PipelineSplit::Layers(vec![10, 20]));
        let a = model_args(&["--pipeline", "--pipeline-split", "even"]);
        assert_eq!(a.split(), PipelineSplit::Even);
        assert_eq!(model_args(&["--pipeline"]).split(), PipelineSplit::Memory);
    }

    #[test]
    fn comm_line_is_per_generated_token_for_every_rank() {
        let r = |steps, collectives, seconds, bytes_sent| RankReport {
            peak_gb: 0.1,
            decode_steps: steps,
            comm: CommStats {
                collectives,
                seconds,
                bytes_sent,
            },
        };
        let line = comm_line(&[r(10, 490, 0.02, 40_000), r(0, 0, 0.0, 0)]);
        assert_eq!(
            line,
            "Communication per token: rank 0 2.000 ms, 49.0 collectives, 4.0 KB sent; \
             rank 1 0.000 ms, 0.0 collectives, 0.0 KB sent"
        );
        let words = r(3, 4, 0.5, 6).words();
        assert_eq!(RankReport::from_words(&words), r(3, 4, 0.5, 6));
    }

    #[test]
    fn peak_memory_line_names_every_rank() {
        assert_eq!(
            peak_memory_line(&[0.2134, 0.2, -1.0]),
            "Peak memory: rank 0 0.213 GB, rank 1 0.200 GB, rank 2 unknown"
        );
    }
}

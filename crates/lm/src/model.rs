//! The model facade: load a Hugging Face directory or a GGUF file, run
//! tokens through it with a KV cache, read its facts.

use std::path::Path;

use candle_core::Tensor;

use huddle_comm::Group;

use crate::comm_stats::{self, CommStats};
use crate::config::{GgufMeta, HfConfig, TransformerConfig, eos_from_json};
use crate::engine::Step;
use crate::error::LmError;
use crate::kv_cache::{KEEP, KvCache};
use crate::models::{self, decoder::Decoder};
use crate::pp::{self, Crew, PipelineSplit, Stage};
use crate::tp::TpReduce;
use crate::weights::Loader;
use crate::weights::gguf::GgufSource;
use crate::weights::safetensors::SafetensorsSource;

/// Load-time quantization of float weights (`--quantize q8|q4`): GGML
/// Q8_0 / Q4_0 blocks of 32, for every linear layer whose input width is
/// whole blocks. Embedding lookups stay float.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantize {
    Q8,
    Q4,
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub quantize: Option<Quantize>,
    /// Bound on KV entries per layer; must exceed the 4 always-kept
    /// positions. See [`crate::kv_cache`] for what happens when full.
    pub max_kv_size: Option<usize>,
    /// Progress bar on stderr (bytes and tensors mapped).
    pub progress: bool,
    /// How a pipeline's layers are divided among its stages.
    pub pipeline_split: PipelineSplit,
    /// How tensor-parallel sharded-to-all layers combine their parts:
    /// exactly (bit-identical to one rank) or by one all_sum; see
    /// [`crate::tp::reduce`].
    pub tp_reduce: TpReduce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's logits, `[vocab]`: the prompt's other
    /// positions skip the output head.
    Last,
    /// Every position's logits, `[tokens, vocab]`.
    All,
    /// Only the last position's greedy token (the first of its largest
    /// logits), as a u32 tensor `[1]`: a tensor-parallel group exchanges
    /// one (value, index) pair per rank instead of its vocabulary's logits.
    Argmax,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Family: llama, mistral, mixtral, qwen2, qwen3, qwen3_moe.
    pub architecture: String,
    pub vocab_size: usize,
    pub context_length: usize,
    pub num_layers: usize,
    /// From generation_config.json and config.json, or GGUF metadata.
    pub eos_token_ids: Vec<u32>,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

pub struct Model {
    decoder: Decoder,
    kv: KvCache,
    info: ModelInfo,
    /// The ranks the model is split over, when more than one.
    crew: Option<Crew>,
    /// This thread's communication counts when the model was loaded.
    comm_base: CommStats,
    /// Communication of one-token steps (decoding), and how many ran.
    decode_comm: CommStats,
    decode_steps: u64,
}

impl Model {
    /// `path`: a Hugging Face directory or a .gguf file.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model, LmError> {
        Model::load_sharded(path, opts, &Group::single())
    }

    /// This rank's part of the model split over `tensor_group` (see
    /// [`crate::tp`]): each rank reads only its slices from disk. Every
    /// rank first checks that all ranks see the same model files. With
    /// more than one rank, rank 0 drives and announces every step; the
    /// other ranks call [`Model::follow`].
    pub fn load_sharded(
        path: &Path,
        opts: &LoadOptions,
        tensor_group: &Group,
    ) -> Result<Model, LmError> {
        sharded_load(path, opts, &Group::single(), tensor_group)
    }

    fn load_split(path: &Path, opts: &LoadOptions, crew: Crew) -> Result<Model, LmError> {
        if let Some(m) = opts.max_kv_size
            && m <= KEEP
        {
            return Err(LmError::BadOption(format!(
                "max_kv_size {m} must exceed the {KEEP} always-kept positions"
            )));
        }
        let meta = std::fs::metadata(path).map_err(|source| LmError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        crate::tp::check_same_model(path, &crew.tensor)?;
        crate::tp::check_same_model(path, &crew.pipeline)?;
        let (cfg, decoder, eos) = if meta.is_dir() {
            load_hf(path, opts, &crew)?
        } else if is_gguf(path)? {
            load_gguf(path, opts, &crew)?
        } else {
            return Err(LmError::NotAModel {
                path: path.to_path_buf(),
            });
        };
        let kv = KvCache::new(
            decoder.local_layers(),
            decoder.local_kv_heads(),
            cfg.head_dim,
            opts.max_kv_size,
        )?;
        let info = ModelInfo {
            architecture: cfg.architecture.clone(),
            vocab_size: cfg.vocab_size,
            context_length: cfg.context_length,
            num_layers: cfg.num_layers,
            eos_token_ids: eos,
            hidden_size: cfg.hidden_size,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        };
        tracing::debug!(?info, quantize = ?opts.quantize, stage = ?decoder.stage(), "model loaded");
        let crew = crew.is_split().then_some(crew);
        Ok(Model {
            decoder,
            kv,
            info,
            crew,
            comm_base: comm_stats::thread_total(),
            decode_comm: CommStats::default(),
            decode_steps: 0,
        })
    }

    /// Runs `tokens` at positions `kv_len()..kv_len() + tokens.len()` in one
    /// batched pass, appending to the KV cache. `Logits::Last` gives an f32
    /// tensor `[vocab]`, `Logits::All` `[tokens.len(), vocab]`,
    /// `Logits::Argmax` the greedy next token (u32 `[1]`). On error the
    /// step's positions are dropped again (`kv_len()` is unchanged).
    ///
    /// On rank 0 of a tensor group this first announces the step to the
    /// other ranks; on the other ranks it is an error (they [`follow`]).
    ///
    /// [`follow`]: Model::follow
    pub fn forward(&mut self, tokens: &[u32], logits: Logits) -> Result<Tensor, LmError> {
        if let Some(crew) = &self.crew {
            if !crew.is_leader() {
                return Err(LmError::NotLeader { rank: crew.rank() });
            }
            let step = Step::Forward {
                tokens: tokens.to_vec(),
                logits,
            };
            let before = comm_stats::thread_total();
            crew.announce(&step)?;
            let out = self.decoder.forward(tokens, &mut self.kv, logits);
            self.count_step(tokens.len(), before);
            return out;
        }
        self.decoder.forward(tokens, &mut self.kv, logits)
    }

    fn count_step(&mut self, tokens: usize, before: CommStats) {
        if tokens == 1 {
            self.decode_comm = self.decode_comm + (comm_stats::thread_total() - before);
            self.decode_steps += 1;
        }
    }

    /// A non-zero rank's side of the engine loop: runs every step rank 0
    /// announces until it stops (returns `Ok`) or the group fails. A step
    /// that fails here for the model's own reasons (a bad token, a full
    /// context) fails alike on rank 0, which reports it; the loop goes on.
    /// A pipeline stage that fails mid-step returns its error: the stages
    /// after it could never finish that step.
    pub fn follow(&mut self) -> Result<(), LmError> {
        let Some(crew) = self.crew.clone() else {
            return Ok(());
        };
        loop {
            match crew.receive()? {
                Step::Forward { tokens, logits } => {
                    let before = comm_stats::thread_total();
                    let result = self.decoder.forward(&tokens, &mut self.kv, logits);
                    self.count_step(tokens.len(), before);
                    match result {
                        Ok(_) => {}
                        Err(e @ (LmError::Comm(_) | LmError::StageFailed { .. })) => {
                            return Err(e);
                        }
                        Err(e) => tracing::debug!(error = %e, "step failed (as on rank 0)"),
                    }
                }
                Step::Truncate { len } => self.truncate_local(len),
                Step::Stop => return Ok(()),
            }
        }
    }

    /// This rank's place in its tensor group: `(rank, size)`.
    pub fn tensor_rank(&self) -> (usize, usize) {
        self.crew
            .as_ref()
            .map_or((0, 1), |c| (c.tensor.rank(), c.tensor.size()))
    }

    /// Global indices of the layers this rank runs.
    pub fn layers(&self) -> std::ops::Range<usize> {
        self.decoder.stage().layers.clone()
    }

    /// This rank's communication since the model was loaded (all zero on
    /// one rank). Counted on the thread that drives or follows the model.
    pub fn comm_stats(&self) -> CommStats {
        if self.crew.is_none() {
            return CommStats::default();
        }
        comm_stats::thread_total() - self.comm_base
    }

    /// The communication of one-token (decode) steps only, and how many
    /// such steps ran: the per-token cost of generation, the prompt left
    /// out. A follower's count starts once rank 0 announced the step.
    pub fn decode_comm_stats(&self) -> (u64, CommStats) {
        (self.decode_steps, self.decode_comm)
    }

    /// This rank's pipeline stage: `(stage, stages)`.
    pub fn pipeline_rank(&self) -> (usize, usize) {
        self.crew
            .as_ref()
            .map_or((0, 1), |c| (c.pipeline.rank(), c.pipeline.size()))
    }

    /// Whether this rank drives (calls [`Model::forward`]) rather than
    /// [`Model::follow`]s: rank 0 of both groups, or a model on one rank.
    pub fn is_leader(&self) -> bool {
        self.crew.as_ref().is_none_or(Crew::is_leader)
    }

    /// Positions processed so far (the next token's position).
    pub fn kv_len(&self) -> usize {
        self.kv.len()
    }

    /// Keeps the first `len` cached positions (chat reuse; 0 = reset).
    pub fn truncate_kv(&mut self, len: usize) {
        if let Some(crew) = &self.crew
            && crew.is_leader()
            && let Err(e) = crew.announce(&Step::Truncate { len })
        {
            // The next forward fails on the same broken group and says so.
            tracing::warn!(error = %e, "announcing a kv truncation failed");
        }
        self.truncate_local(len);
    }

    fn truncate_local(&mut self, len: usize) {
        if let Err(e) = self.kv.truncate(len) {
            tracing::warn!(error = %e, "kv cache truncation failed; cache reset");
            let _ = self.kv.truncate(0);
        }
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The hyperparameters the model was built from.
    pub fn config(&self) -> &TransformerConfig {
        self.decoder.config()
    }
}

impl Drop for Model {
    /// Rank 0 going away releases the followers.
    fn drop(&mut self) {
        if let Some(crew) = &self.crew
            && crew.is_leader()
            && let Err(e) = crew.announce(&Step::Stop)
        {
            tracing::debug!(error = %e, "telling followers to stop failed");
        }
    }
}

/// This rank's part of the model split over a pipeline group (a stage of
/// layers per rank, see [`crate::pp`]) and, within each stage, a tensor
/// group (see [`crate::tp`]); a size-1 group means no split on that axis.
/// Rank 0 of both groups drives and is used like a single-machine
/// [`Model`]; every other rank calls [`Model::follow`]. For both axes at
/// once, split one world group twice: `tensor = world.split(stage, t)`,
/// `pipeline = world.split(t, stage)`.
pub fn sharded_load(
    path: &Path,
    opts: &LoadOptions,
    pipeline_group: &Group,
    tensor_group: &Group,
) -> Result<Model, LmError> {
    Model::load_split(path, opts, Crew::new(pipeline_group, tensor_group))
}

/// This rank's stage of the plan every rank of the crew agrees on.
fn plan_stage(num_layers: usize, opts: &LoadOptions, crew: &Crew) -> Result<Stage, LmError> {
    let plan = pp::plan(
        num_layers,
        &opts.pipeline_split,
        &crew.pipeline,
        &crew.tensor,
    )?;
    Ok(Stage::of(&plan, crew.pipeline.rank()))
}

fn is_gguf(path: &Path) -> Result<bool, LmError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|source| LmError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let n = file.read(&mut magic).map_err(|source| LmError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(n == 4 && &magic == b"GGUF")
}

type Loaded = (TransformerConfig, Decoder, Vec<u32>);

fn load_hf(dir: &Path, opts: &LoadOptions, crew: &Crew) -> Result<Loaded, LmError> {
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        return Err(LmError::NotAModel {
            path: dir.to_path_buf(),
        });
    }
    let hf = HfConfig::read(&config_path)?;
    let cfg = models::config_from_hf(&hf)?;
    let mut eos = generation_eos(dir)?;
    for id in hf.eos_ids()? {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }
    let stage = plan_stage(cfg.num_layers, opts, crew)?;
    let source = SafetensorsSource::open_dir(dir)?;
    let mut loader = Loader::new(Box::new(source), opts.quantize, opts.progress)
        .with_group(crew.tensor.clone())
        .with_tp_reduce(opts.tp_reduce);
    let decoder = Decoder::load(cfg.clone(), &mut loader, &crew.pipeline, stage)?;
    loader.finish();
    Ok((cfg, decoder, eos))
}

/// `eos_token_id` of generation_config.json, when the file exists.
fn generation_eos(dir: &Path) -> Result<Vec<u32>, LmError> {
    let path = dir.join("generation_config.json");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).map_err(|source| LmError::Io {
        path: path.clone(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|source| LmError::Json {
        path: path.clone(),
        source,
    })?;
    eos_from_json(&path, json.get("eos_token_id"))
}

fn load_gguf(path: &Path, opts: &LoadOptions, crew: &Crew) -> Result<Loaded, LmError> {
    let mut source = GgufSource::open(path)?;
    let metadata = source.take_metadata();
    let meta = GgufMeta::new(path, &metadata)?;
    let mut loader = Loader::new(Box::new(source), opts.quantize, opts.progress)
        .with_group(crew.tensor.clone())
        .with_tp_reduce(opts.tp_reduce);
    let cfg = models::config_from_gguf(&meta, &loader)?;
    let eos = meta.eos_ids();
    // The metadata holds the tokenizer's vocabulary and merges (~20 MB for
    // a 150k vocabulary): gone before the weights arrive, not part of the
    // peak.
    drop(meta);
    drop(metadata);
    let stage = plan_stage(cfg.num_layers, opts, crew)?;
    let decoder = Decoder::load(cfg.clone(), &mut loader, &crew.pipeline, stage)?;
    loader.finish();
    Ok((cfg, decoder, eos))
}

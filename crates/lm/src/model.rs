//! The model facade: load a Hugging Face directory or a GGUF file, run
//! tokens through it with a KV cache, read its facts.

use std::path::Path;

use candle_core::Tensor;

use huddle_comm::Group;

use crate::config::{GgufMeta, HfConfig, TransformerConfig, eos_from_json};
use crate::engine::{self, Step};
use crate::error::LmError;
use crate::kv_cache::{KEEP, KvCache};
use crate::models::{self, decoder::Decoder};
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's logits, `[vocab]`: the prompt's other
    /// positions skip the output head.
    Last,
    /// Every position's logits, `[tokens, vocab]`.
    All,
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
    /// The tensor group when it has more than one rank.
    group: Option<Group>,
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
        crate::tp::check_same_model(path, tensor_group)?;
        let group = tensor_group.clone();
        let (cfg, decoder, eos) = if meta.is_dir() {
            load_hf(path, opts, group)?
        } else if is_gguf(path)? {
            load_gguf(path, opts, group)?
        } else {
            return Err(LmError::NotAModel {
                path: path.to_path_buf(),
            });
        };
        let kv = KvCache::new(
            cfg.num_layers,
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
        tracing::debug!(?info, quantize = ?opts.quantize, "model loaded");
        let group = (tensor_group.size() > 1).then(|| tensor_group.clone());
        Ok(Model {
            decoder,
            kv,
            info,
            group,
        })
    }

    /// Runs `tokens` at positions `kv_len()..kv_len() + tokens.len()` in one
    /// batched pass, appending to the KV cache. `Logits::Last` gives an f32
    /// tensor `[vocab]`, `Logits::All` `[tokens.len(), vocab]`. On error the
    /// step's positions are dropped again (`kv_len()` is unchanged).
    ///
    /// On rank 0 of a tensor group this first announces the step to the
    /// other ranks; on the other ranks it is an error (they [`follow`]).
    ///
    /// [`follow`]: Model::follow
    pub fn forward(&mut self, tokens: &[u32], logits: Logits) -> Result<Tensor, LmError> {
        if let Some(group) = &self.group {
            if group.rank() != 0 {
                return Err(LmError::NotLeader { rank: group.rank() });
            }
            let step = Step::Forward {
                tokens: tokens.to_vec(),
                logits,
            };
            engine::announce(group, &step)?;
        }
        self.decoder.forward(tokens, &mut self.kv, logits)
    }

    /// A non-zero rank's side of the engine loop: runs every step rank 0
    /// announces until it stops (returns `Ok`) or the group fails. A step
    /// that fails here for the model's own reasons (a bad token, a full
    /// context) fails alike on rank 0, which reports it; the loop goes on.
    pub fn follow(&mut self) -> Result<(), LmError> {
        let Some(group) = self.group.clone() else {
            return Ok(());
        };
        loop {
            match engine::receive(&group)? {
                Step::Forward { tokens, logits } => {
                    match self.decoder.forward(&tokens, &mut self.kv, logits) {
                        Ok(_) => {}
                        Err(e @ LmError::Comm(_)) => return Err(e),
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
        self.group.as_ref().map_or((0, 1), |g| (g.rank(), g.size()))
    }

    /// Positions processed so far (the next token's position).
    pub fn kv_len(&self) -> usize {
        self.kv.len()
    }

    /// Keeps the first `len` cached positions (chat reuse; 0 = reset).
    pub fn truncate_kv(&mut self, len: usize) {
        if let Some(group) = &self.group
            && group.rank() == 0
            && let Err(e) = engine::announce(group, &Step::Truncate { len })
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
        if let Some(group) = &self.group
            && group.rank() == 0
            && let Err(e) = engine::announce(group, &Step::Stop)
        {
            tracing::debug!(error = %e, "telling followers to stop failed");
        }
    }
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

fn load_hf(dir: &Path, opts: &LoadOptions, group: Group) -> Result<Loaded, LmError> {
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
    let source = SafetensorsSource::open_dir(dir)?;
    let mut loader = Loader::new(Box::new(source), opts.quantize, opts.progress).with_group(group);
    let decoder = Decoder::load(cfg.clone(), &mut loader)?;
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

fn load_gguf(path: &Path, opts: &LoadOptions, group: Group) -> Result<Loaded, LmError> {
    let mut source = GgufSource::open(path)?;
    let metadata = source.take_metadata();
    let meta = GgufMeta::new(path, &metadata)?;
    let mut loader = Loader::new(Box::new(source), opts.quantize, opts.progress).with_group(group);
    let cfg = models::config_from_gguf(&meta, &loader)?;
    let eos = meta.eos_ids();
    let decoder = Decoder::load(cfg.clone(), &mut loader)?;
    loader.finish();
    Ok((cfg, decoder, eos))
}

//! Errors of the model runtime. Each variant names what went wrong (the
//! file, the tensor, the config field) so that the CLI can print it as one
//! line that tells the user what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LmError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A config field (config.json key or GGUF metadata key) is missing or
    /// has the wrong type or an impossible value.
    #[error("{}: field `{field}`: {msg}", path.display())]
    ConfigField {
        path: PathBuf,
        field: String,
        msg: String,
    },

    /// A config field that changes the math to a value we do not implement:
    /// refusing is better than computing something else silently.
    #[error("{}: field `{field}` = {value} is not supported: {why}", path.display())]
    UnsupportedConfig {
        path: PathBuf,
        field: String,
        value: String,
        why: String,
    },

    #[error("{}: unsupported architecture `{architecture}` (supported: {supported})", path.display())]
    UnsupportedArchitecture {
        path: PathBuf,
        architecture: String,
        supported: &'static str,
    },

    #[error("{}: unsupported rope_scaling type `{rope_type}` (supported: default, linear, llama3, yarn)", path.display())]
    UnsupportedRope { path: PathBuf, rope_type: String },

    #[error("{}: tensor `{tensor}` has unsupported data type {dtype}", path.display())]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },

    #[error("{}: unsupported quantization type: {detail}", path.display())]
    UnsupportedQuantization { path: PathBuf, detail: String },

    #[error("{}: missing tensor `{tensor}`", path.display())]
    MissingTensor { path: PathBuf, tensor: String },

    #[error("{}: file is truncated: {detail}", path.display())]
    Truncated { path: PathBuf, detail: String },

    #[error("{}: tensor `{tensor}` has shape {found:?}, the config expects {expected:?}", path.display())]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A slice request that does not fit the tensor (out of range, or not on
    /// a quantization block boundary).
    #[error("{}: tensor `{tensor}`: cannot read slice {slice}: {why}", path.display())]
    BadSlice {
        path: PathBuf,
        tensor: String,
        slice: String,
        why: String,
    },

    #[error("{}: invalid weights file: {detail}", path.display())]
    BadWeightsFile { path: PathBuf, detail: String },

    #[error("{}: not a model: expected a Hugging Face directory (config.json + *.safetensors) or a .gguf file", path.display())]
    NotAModel { path: PathBuf },

    #[error(
        "{tokens} tokens at position {position} exceed the model's context length {context_length}"
    )]
    ContextOverflow {
        position: usize,
        tokens: usize,
        context_length: usize,
    },

    #[error("token id {token} is outside the vocabulary (size {vocab_size})")]
    TokenOutOfRange { token: u32, vocab_size: usize },

    #[error("forward called with no tokens")]
    EmptyInput,

    #[error("invalid load option: {0}")]
    BadOption(String),

    #[error("tensor computation failed: {}", first_line(.0))]
    Candle(#[from] candle_core::Error),

    /// Communication between the ranks of a split model failed (a peer
    /// died, or the ranks disagree about what to compute).
    #[error("communication between the model's ranks failed: {0}")]
    Comm(huddle_comm::CommError),

    /// A pipeline stage failed after the step's hidden states started
    /// moving: the other stages cannot finish the step, so the rank stops.
    #[error("pipeline stage {stage} failed mid-step: {source}")]
    StageFailed {
        stage: usize,
        #[source]
        source: Box<LmError>,
    },

    #[error("{}: rank {rank} has a different model than rank 0 (same path, other files?)", path.display())]
    ModelMismatch { path: PathBuf, rank: usize },

    /// A step message from rank 0 that makes no sense (a version skew).
    #[error("rank {rank}: bad step message from rank 0: {what}")]
    BadStep { rank: usize, what: String },

    /// Model::forward called on a rank that follows rank 0's engine loop.
    #[error(
        "rank {rank} of a split model runs the steps rank 0 announces: call Model::follow there"
    )]
    NotLeader { rank: usize },

    /// The model cannot be divided over this many ranks.
    #[error("cannot split the model over {ranks} ranks: {why}")]
    Unsplittable { ranks: usize, why: String },
}

impl LmError {
    pub fn comm(e: huddle_comm::CommError) -> LmError {
        LmError::Comm(e)
    }
}

/// candle appends a backtrace to its messages when RUST_BACKTRACE is set;
/// our errors stay one line.
pub(crate) fn first_line(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

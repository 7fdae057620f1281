//! huddle-lm: the model runtime. Model architectures (our own code on
//! candle), weights from Hugging Face directories and GGUF files,
//! tokenizers, chat templates, sampling and generation.
//!
//! Every linear layer is built so that it can be split across ranks later;
//! nothing here allocates per generated token beyond what candle needs.

pub mod comm_stats;
pub mod config;
pub mod error;
pub mod fused;
pub mod kernel_matmul;
pub mod kv_cache;
pub mod linear;
pub mod model;
pub mod models;
pub mod rope;
pub mod weights;

pub mod engine;
pub mod pp;
pub mod tp;

pub mod chat;
pub mod chat_template;
pub mod generate;
pub mod sampling;
pub mod stream;
pub mod threads;
pub mod tokenizer;

pub use chat::ChatSession;
pub use chat_template::{ChatTemplate, Message};
pub use comm_stats::CommStats;
pub use error::LmError;
pub use generate::{FinishReason, GenerateOptions, Generation, Generator, generate};
pub use model::{LoadOptions, Logits, Model, ModelInfo, Quantize, sharded_load};
pub use pp::PipelineSplit;
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::Tokenizer;
pub use tp::TpReduce;

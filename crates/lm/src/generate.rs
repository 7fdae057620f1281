//! The generation loop: one batched pass over the prompt, then one token at
//! a time until an end-of-turn token, a stop string, the token limit or the
//! context's end, streaming text as it becomes safe to show.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Storage, Tensor};

use crate::chat_template::{ChatTemplate, Message, TemplateError};
use crate::error::LmError;
use crate::model::{Logits, Model, ModelInfo};
use crate::sampling::{Sampler, SamplingError, SamplingParams};
use crate::stream::TextStream;
use crate::tokenizer::{PieceEncoding, Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Model(#[from] LmError),
    #[error("reading logits: {0}")]
    Logits(#[from] candle_core::Error),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("the prompt is empty: nothing to generate from")]
    EmptyPrompt,
    #[error("the prompt needs {needed} positions but the model's context is {context} tokens")]
    ContextOverflow { needed: usize, context: usize },
}

/// How to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends before any of these strings (never shown).
    pub stop_strings: Vec<String>,
    /// Generation ends at any of these tokens (never shown).
    pub eos_token_ids: Vec<u32>,
    /// Leave special tokens out of the text.
    pub skip_special_tokens: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop_strings: Vec::new(),
            eos_token_ids: Vec::new(),
            skip_special_tokens: true,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence or end-of-turn token.
    Eos,
    /// A stop string.
    StopString,
    /// `max_tokens` reached.
    MaxTokens,
    /// The model's context is full.
    ContextFull,
    /// The text callback asked to stop.
    Cancelled,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// From the start to the first sampled token.
    pub prompt_secs: f64,
    pub generated_tokens: usize,
    /// From the first sampled token to the end.
    pub generation_secs: f64,
}

impl GenerationStats {
    pub fn prompt_tokens_per_sec(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_secs)
    }

    pub fn generation_tokens_per_sec(&self) -> f64 {
        rate(self.generated_tokens, self.generation_secs)
    }
}

fn rate(tokens: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        tokens as f64 / secs
    } else {
        0.0
    }
}

/// What one generation produced.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Sampled tokens, without the final EOS.
    pub tokens: Vec<u32>,
    /// The text shown (without EOS or the stop string).
    pub text: String,
    pub finish: FinishReason,
    pub stats: GenerationStats,
}

/// Runs generations; keeps the sampler's random state and the buffers
/// (logits, detokenizer) from one generation to the next.
pub struct Generator {
    options: GenerateOptions,
    sampler: Sampler,
    stream: TextStream,
    logits: Vec<f32>,
    history: Vec<u32>,
}

impl Generator {
    pub fn new(options: GenerateOptions) -> Result<Self, GenerateError> {
        let sampler = Sampler::new(options.sampling.clone())?;
        let stream = TextStream::new(&options.stop_strings);
        Ok(Generator {
            options,
            sampler,
            stream,
            logits: Vec::new(),
            history: Vec::new(),
        })
    }

    pub fn options(&self) -> &GenerateOptions {
        &self.options
    }

    /// Feeds `new_tokens` after what the model's KV cache already holds,
    /// then generates. `on_text` gets each piece of text as it becomes
    /// final and may return `Break` to stop. On return the cache holds the
    /// prompt and every generated token except the last one sampled
    /// (which was never fed), or all of them when generation ended at EOS.
    pub fn run(
        &mut self,
        model: &mut Model,
        tokenizer: &Tokenizer,
        new_tokens: &[u32],
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, GenerateError> {
        if new_tokens.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let context = model.info().context_length;
        let needed = model.kv_len() + new_tokens.len();
        if context > 0 && needed > context {
            return Err(GenerateError::ContextOverflow { needed, context });
        }
        self.stream.reset();
        self.stream
            .set_trim_leading_space(tokenizer.piece_encoding() == PieceEncoding::Metaspace);
        self.history.clear();
        self.history.extend_from_slice(new_tokens);

        let start = Instant::now();
        // Plain greedy decoding lets the model pick the token (a tensor
        // group then exchanges one pick per rank, not the logits).
        let greedy = self.sampler.is_greedy();
        let mode = if greedy { Logits::Argmax } else { Logits::Last };
        let mut out = model.forward(new_tokens, mode)?;
        let mut first_token_at = None;
        let mut tokens = Vec::new();
        let mut text = String::new();
        let finish = loop {
            if tokens.len() >= self.options.max_tokens {
                break FinishReason::MaxTokens;
            }
            let id = if greedy {
                out.to_vec1::<u32>()?.first().copied().unwrap_or(0)
            } else {
                copy_logits(&out, &mut self.logits)?;
                self.sampler.sample(&mut self.logits, &self.history)?
            };
            first_token_at.get_or_insert_with(Instant::now);
            if self.options.eos_token_ids.contains(&id) {
                break FinishReason::Eos;
            }
            tokens.push(id);
            self.history.push(id);
            let bytes = if self.options.skip_special_tokens && tokenizer.is_special(id) {
                &[][..]
            } else {
                tokenizer.token_bytes(id)
            };
            let emitted = self.stream.push(bytes);
            if !emitted.text.is_empty() {
                text.push_str(emitted.text);
                if on_text(emitted.text).is_break() {
                    break FinishReason::Cancelled;
                }
            }
            if emitted.stop.is_some() {
                break FinishReason::StopString;
            }
            if tokens.len() >= self.options.max_tokens {
                break FinishReason::MaxTokens;
            }
            if context > 0 && model.kv_len() >= context {
                break FinishReason::ContextFull;
            }
            out = model.forward(&[id], mode)?;
        };
        if matches!(
            finish,
            FinishReason::Eos | FinishReason::MaxTokens | FinishReason::ContextFull
        ) {
            let rest = self.stream.finish();
            if !rest.text.is_empty() {
                text.push_str(rest.text);
                let _ = on_text(rest.text);
            }
        }
        let end = Instant::now();
        let first = first_token_at.unwrap_or(end);
        Ok(Generation {
            stats: GenerationStats {
                prompt_tokens: new_tokens.len(),
                prompt_secs: (first - start).as_secs_f64(),
                generated_tokens: tokens.len(),
                generation_secs: (end - first).as_secs_f64(),
            },
            tokens,
            text,
            finish,
        })
    }
}

/// One generation with a fresh [`Generator`].
pub fn generate(
    model: &mut Model,
    tokenizer: &Tokenizer,
    new_tokens: &[u32],
    options: &GenerateOptions,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation, GenerateError> {
    Generator::new(options.clone())?.run(model, tokenizer, new_tokens, on_text)
}

/// Every token that ends the model's turn: the model config's EOS ids, the
/// tokenizer's, and the template's end-of-turn token (`<|im_end|>` where
/// the configured EOS is `<|endoftext|>`).
pub fn stop_token_ids(
    info: &ModelInfo,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
) -> Vec<u32> {
    let mut ids = Vec::new();
    let template_ids = template
        .map(|t| t.end_of_turn_ids(tokenizer))
        .unwrap_or_default();
    for id in info
        .eos_token_ids
        .iter()
        .chain(tokenizer.eos_token_ids())
        .chain(&template_ids)
    {
        if !ids.contains(id) {
            ids.push(*id);
        }
    }
    ids
}

/// Token ids of a chat rendered with the generation prompt. Like
/// transformers' `apply_chat_template`, nothing is added around the text:
/// the template writes BOS itself where the model wants it.
pub fn encode_chat(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[Message],
) -> Result<Vec<u32>, GenerateError> {
    let text = template.render(messages, true)?;
    Ok(tokenizer.encode(&text, false)?)
}

/// Token ids of a raw prompt, with BOS added where the model wants it
/// unless the text already starts with it.
pub fn encode_plain(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, GenerateError> {
    let has_bos = tokenizer
        .bos_token()
        .is_some_and(|b| !b.text.is_empty() && text.starts_with(&b.text));
    Ok(tokenizer.encode(text, !has_bos)?)
}

/// Copies a logits tensor into `buf` (resized to fit), without a new
/// allocation when the tensor is a contiguous f32 one on the CPU.
fn copy_logits(logits: &Tensor, buf: &mut Vec<f32>) -> Result<(), candle_core::Error> {
    let logits = if logits.dtype() == DType::F32 {
        logits.clone()
    } else {
        logits.to_dtype(DType::F32)?
    };
    {
        let (storage, layout) = logits.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            let data = cpu.as_slice::<f32>()?;
            buf.clear();
            buf.extend_from_slice(&data[start..end]);
            return Ok(());
        }
    }
    *buf = logits.flatten_all()?.to_vec1::<f32>()?;
    Ok(())
}

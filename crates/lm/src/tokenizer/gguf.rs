//! A tokenizer from GGUF metadata, tokenizing as llama.cpp does.
//!
//! llama.cpp's byte-level BPE: split the text on special tokens (control
//! tokens only when special parsing is on; user-defined tokens always),
//! split each remaining part with the pre-tokenizer's regexes, map bytes to
//! GPT-2's byte alphabet, then apply merges by rank. That is exactly a
//! `tokenizers` pipeline of added tokens, a sequence of `Split`s (isolated
//! matches), `ByteLevel` without its own regex and a BPE model.
//! SentencePiece vocabularies (`tokenizer.ggml.model` = "llama") are built
//! by `spm`; special tokens, BOS/EOS and the template are read here for both.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::pre::pre_tokenizer_spec;
use super::{Origin, Parts, PieceEncoding, SpecialToken, Tokenizer, TokenizerError};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

pub(super) fn build(
    path: &Path,
    meta: &HashMap<String, Value>,
) -> Result<Tokenizer, TokenizerError> {
    let md = Metadata { path, meta };
    let model = md.string("tokenizer.ggml.model")?;
    let tokens = md.string_array("tokenizer.ggml.tokens")?;
    let types = md.int_array("tokenizer.ggml.token_type")?;
    if let Some(types) = &types
        && types.len() != tokens.len()
    {
        return Err(md.field_error(
            "tokenizer.ggml.token_type",
            format!("{} entries for {} tokens", types.len(), tokens.len()),
        ));
    }
    let (mut inner, add_bos_default, encoding) = match model {
        "gpt2" => (
            byte_level_bpe(&md, &tokens)?,
            None,
            PieceEncoding::ByteLevel,
        ),
        "llama" => (
            sentencepiece(&md, &tokens)?,
            Some(true),
            PieceEncoding::Metaspace,
        ),
        _ => {
            return Err(TokenizerError::UnsupportedModel {
                path: path.to_path_buf(),
                model: model.to_string(),
            });
        }
    };
    let add_bos_default = match add_bos_default {
        Some(default) => default,
        None => md
            .optional_string("tokenizer.ggml.pre")?
            .and_then(pre_tokenizer_spec)
            .is_some_and(|spec| spec.add_bos_default),
    };

    let mut added = Vec::new();
    if let Some(types) = &types {
        for (token, &kind) in tokens.iter().zip(types) {
            match kind {
                TOKEN_TYPE_CONTROL => added.push(AddedToken::from(token.to_string(), true)),
                TOKEN_TYPE_USER_DEFINED => {
                    added.push(AddedToken::from(token.to_string(), false).normalized(false))
                }
                _ => {}
            }
        }
    }
    inner.add_tokens(added).map_err(|e| {
        TokenizerError::Tokenizers(format!("{}: adding special tokens: {e}", path.display()))
    })?;

    let special = |key: &str| -> Result<Option<SpecialToken>, TokenizerError> {
        let Some(id) = md.optional_u32(key)? else {
            return Ok(None);
        };
        let text = tokens.get(id as usize).ok_or_else(|| {
            md.field_error(key, format!("id {id} is past the {} tokens", tokens.len()))
        })?;
        Ok(Some(SpecialToken {
            id,
            text: text.to_string(),
        }))
    };
    let bos = special("tokenizer.ggml.bos_token_id")?;
    let eos = special("tokenizer.ggml.eos_token_id")?;
    let mut extra_eos_ids = Vec::new();
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        extra_eos_ids.extend(special(key)?.map(|t| t.id));
    }
    let add_bos = md
        .optional_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(add_bos_default);
    let add_eos = md
        .optional_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    let chat_template = md
        .optional_string("tokenizer.chat_template")?
        .map(str::to_string);

    Ok(Parts {
        inner,
        origin: Origin::Gguf { add_bos, add_eos },
        bos,
        eos,
        extra_eos_ids,
        chat_template,
        encoding,
    }
    .finish())
}

/// GPT-2 style byte-level BPE split by the named pre-tokenizer's regexes.
fn byte_level_bpe(
    md: &Metadata<'_>,
    tokens: &[&str],
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let pre_name = md
        .optional_string("tokenizer.ggml.pre")?
        .unwrap_or("default");
    let spec = pre_tokenizer_spec(pre_name).ok_or_else(|| TokenizerError::UnknownPreTokenizer {
        path: md.path.to_path_buf(),
        name: pre_name.to_string(),
    })?;
    if pre_name.is_empty() || pre_name == "default" {
        tracing::warn!(path = %md.path.display(), "GGUF names no pre-tokenizer; using llama.cpp's default split");
    }
    let merges = md.string_array("tokenizer.ggml.merges")?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string(), id as u32))
        .collect();
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for (i, merge) in merges.iter().enumerate() {
        let (a, b) = merge.split_once(' ').ok_or_else(|| {
            md.field_error(
                "tokenizer.ggml.merges",
                format!("entry {i} ({merge:?}) is not two tokens"),
            )
        })?;
        merge_pairs.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merge_pairs)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| md.field_error("tokenizer.ggml.merges", e.to_string()))?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    let mut splits: Vec<PreTokenizerWrapper> = Vec::with_capacity(spec.regexes.len() + 1);
    for regex in spec.regexes {
        let split = Split::new(
            SplitPattern::Regex((*regex).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Tokenizers(format!("pre-tokenizer regex {regex:?}: {e}")))?;
        splits.push(split.into());
    }
    splits.push(ByteLevel::new(false, false, false).into());
    inner.with_pre_tokenizer(Some(Sequence::new(splits)));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(inner)
}

/// SentencePiece with scores (`tokenizer.ggml.model` = "llama").
fn sentencepiece(
    md: &Metadata<'_>,
    tokens: &[&str],
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let scores = md.float_array("tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(md.field_error(
            "tokenizer.ggml.scores",
            format!("{} entries for {} tokens", scores.len(), tokens.len()),
        ));
    }
    let add_space_prefix = md
        .optional_bool("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    let unk = md.optional_u32("tokenizer.ggml.unknown_token_id")?;
    super::spm::pipeline(tokens, &scores, unk, add_space_prefix)
        .map_err(|e| md.field_error("tokenizer.ggml.scores", e))
}

/// Typed access to GGUF metadata with errors naming the key.
struct Metadata<'a> {
    path: &'a Path,
    meta: &'a HashMap<String, Value>,
}

impl<'a> Metadata<'a> {
    fn field_error(&self, key: &str, msg: String) -> TokenizerError {
        TokenizerError::Field {
            path: self.path.to_path_buf(),
            field: key.to_string(),
            msg,
        }
    }

    fn required(&self, key: &str) -> Result<&'a Value, TokenizerError> {
        self.meta
            .get(key)
            .ok_or_else(|| TokenizerError::MissingMetadata {
                path: self.path.to_path_buf(),
                key: key.to_string(),
            })
    }

    fn string(&self, key: &str) -> Result<&'a str, TokenizerError> {
        match self.required(key)? {
            Value::String(s) => Ok(s),
            other => Err(self.field_error(
                key,
                format!("expected a string, found {:?}", other.value_type()),
            )),
        }
    }

    fn optional_string(&self, key: &str) -> Result<Option<&'a str>, TokenizerError> {
        if self.meta.contains_key(key) {
            self.string(key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn optional_bool(&self, key: &str) -> Result<Option<bool>, TokenizerError> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.field_error(
                key,
                format!("expected a bool, found {:?}", other.value_type()),
            )),
        }
    }

    fn optional_u32(&self, key: &str) -> Result<Option<u32>, TokenizerError> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(v) => int_value(v)
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.field_error(key, format!("expected a token id, found {v:?}"))),
        }
    }

    fn string_array(&self, key: &str) -> Result<Vec<&'a str>, TokenizerError> {
        let Value::Array(items) = self.required(key)? else {
            return Err(self.field_error(key, "expected an array of strings".into()));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(self.field_error(key, format!("entry {i} is not a string"))),
            })
            .collect()
    }

    fn float_array(&self, key: &str) -> Result<Vec<f32>, TokenizerError> {
        let Value::Array(items) = self.required(key)? else {
            return Err(self.field_error(key, "expected an array of numbers".into()));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                float_value(v)
                    .ok_or_else(|| self.field_error(key, format!("entry {i} is not a number")))
            })
            .collect()
    }

    fn int_array(&self, key: &str) -> Result<Option<Vec<i64>>, TokenizerError> {
        let Some(value) = self.meta.get(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(self.field_error(key, "expected an array of integers".into()));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                int_value(v)
                    .ok_or_else(|| self.field_error(key, format!("entry {i} is not an integer")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

fn float_value(v: &Value) -> Option<f32> {
    match *v {
        Value::F32(x) => Some(x),
        Value::F64(x) => Some(x as f32),
        _ => int_value(v).map(|n| n as f32),
    }
}

fn int_value(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(n) => n.into(),
        Value::I8(n) => n.into(),
        Value::U16(n) => n.into(),
        Value::I16(n) => n.into(),
        Value::U32(n) => n.into(),
        Value::I32(n) => n.into(),
        Value::U64(n) => i64::try_from(n).ok()?,
        Value::I64(n) => n,
        _ => return None,
    })
}

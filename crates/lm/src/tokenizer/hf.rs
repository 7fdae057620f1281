//! A tokenizer from a Hugging Face model directory.
//!
//! tokenizer.json is the pipeline itself (its post-processor adds BOS where
//! the model wants it, as transformers' fast tokenizers do);
//! tokenizer_config.json names the BOS/EOS tokens and holds the chat
//! template (or chat_template.jinja does); generation_config.json and
//! config.json may list more EOS ids.

use std::path::Path;

use serde_json::Value;

use super::{Origin, Parts, PieceEncoding, SpecialToken, Tokenizer, TokenizerError};

pub(super) fn load(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let tokenizer_json = dir.join("tokenizer.json");
    if !tokenizer_json.is_file() {
        return Err(TokenizerError::NoTokenizerJson {
            path: dir.to_path_buf(),
        });
    }
    let mut inner = tokenizers::Tokenizer::from_file(&tokenizer_json)
        .map_err(|e| TokenizerError::Tokenizers(format!("{}: {e}", tokenizer_json.display())))?;
    // Prompts must never be cut or padded behind the caller's back.
    inner.with_padding(None);
    inner
        .with_truncation(None)
        .map_err(|e| TokenizerError::Tokenizers(format!("{}: {e}", tokenizer_json.display())))?;

    let config_path = dir.join("tokenizer_config.json");
    let config = read_json(&config_path)?.unwrap_or(Value::Null);
    let special = |field: &str| -> Result<Option<SpecialToken>, TokenizerError> {
        let text = match config.get(field) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => match o.get("content") {
                Some(Value::String(s)) => s.clone(),
                _ => {
                    return Err(field_error(
                        &config_path,
                        field,
                        "object without a string `content`",
                    ));
                }
            },
            Some(_) => {
                return Err(field_error(
                    &config_path,
                    field,
                    "expected a string or an object",
                ));
            }
        };
        let id = inner.token_to_id(&text).ok_or_else(|| {
            field_error(
                &config_path,
                field,
                &format!("token {text:?} is not in tokenizer.json"),
            )
        })?;
        Ok(Some(SpecialToken { id, text }))
    };
    let bos = special("bos_token")?;
    let eos = special("eos_token")?;

    let mut extra_eos_ids = Vec::new();
    for name in ["generation_config.json", "config.json"] {
        let path = dir.join(name);
        if let Some(json) = read_json(&path)? {
            extra_eos_ids.extend(eos_ids(&path, &json)?);
        }
    }

    let chat_template = chat_template(dir, &config_path, &config)?;
    let encoding = piece_encoding(&inner);
    Ok(Parts {
        inner,
        origin: Origin::HuggingFace,
        bos,
        eos,
        extra_eos_ids,
        chat_template,
        encoding,
    }
    .finish())
}

fn read_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokenizerError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| TokenizerError::Json {
            path: path.to_path_buf(),
            source,
        })
}

fn field_error(path: &Path, field: &str, msg: &str) -> TokenizerError {
    TokenizerError::Field {
        path: path.to_path_buf(),
        field: field.to_string(),
        msg: msg.to_string(),
    }
}

/// `eos_token_id`: a number or a list of numbers.
fn eos_ids(path: &Path, json: &Value) -> Result<Vec<u32>, TokenizerError> {
    let as_id = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                field_error(
                    path,
                    "eos_token_id",
                    "expected a token id or a list of them",
                )
            })
    };
    match json.get("eos_token_id") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(as_id).collect(),
        Some(v) => Ok(vec![as_id(v)?]),
    }
}

/// chat_template.jinja if present, else tokenizer_config.json's
/// `chat_template` (a string, or a list of named templates: "default").
fn chat_template(
    dir: &Path,
    config_path: &Path,
    config: &Value,
) -> Result<Option<String>, TokenizerError> {
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(text) => return Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(TokenizerError::Io {
                path: jinja,
                source,
            });
        }
    }
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(named)) => {
            let default = named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str);
            default.map(|s| Some(s.to_string())).ok_or_else(|| {
                field_error(
                    config_path,
                    "chat_template",
                    "no template named \"default\"",
                )
            })
        }
        Some(_) => Err(field_error(
            config_path,
            "chat_template",
            "expected a string or a list",
        )),
    }
}

/// How token strings map to bytes, read from the decoder's description.
fn piece_encoding(tokenizer: &tokenizers::Tokenizer) -> PieceEncoding {
    let Some(decoder) = tokenizer.get_decoder() else {
        return PieceEncoding::Plain;
    };
    let description = serde_json::to_string(decoder).unwrap_or_default();
    if description.contains("\"ByteLevel\"") {
        PieceEncoding::ByteLevel
    } else if description.contains("\"ByteFallback\"") || description.contains("\"Metaspace\"") {
        PieceEncoding::Metaspace
    } else {
        PieceEncoding::Plain
    }
}

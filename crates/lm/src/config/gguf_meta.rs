//! Typed reads of GGUF metadata (llama.cpp's keys).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use super::RopeScaling;
use super::hf_json::yarn_mscale;
use crate::error::LmError;

/// Typed reads of GGUF metadata, keys relative to `{arch}.`.
pub struct GgufMeta<'a> {
    pub path: &'a Path,
    pub arch: String,
    pub meta: &'a HashMap<String, Value>,
}

impl<'a> GgufMeta<'a> {
    pub fn new(path: &'a Path, meta: &'a HashMap<String, Value>) -> Result<Self, LmError> {
        let arch = match meta.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(LmError::ConfigField {
                    path: path.to_path_buf(),
                    field: "general.architecture".into(),
                    msg: "expected a string".into(),
                });
            }
            None => {
                return Err(LmError::ConfigField {
                    path: path.to_path_buf(),
                    field: "general.architecture".into(),
                    msg: "missing".into(),
                });
            }
        };
        Ok(GgufMeta { path, arch, meta })
    }

    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.arch)
    }

    fn error(&self, key: &str, msg: impl Into<String>) -> LmError {
        LmError::ConfigField {
            path: self.path.to_path_buf(),
            field: self.key(key),
            msg: msg.into(),
        }
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, LmError> {
        let full = self.key(key);
        let Some(v) = self.meta.get(&full) else {
            return Ok(None);
        };
        let n = match v {
            Value::U8(x) => Some(*x as u64),
            Value::U16(x) => Some(*x as u64),
            Value::U32(x) => Some(*x as u64),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| self.error(key, format!("expected a non-negative integer, found {v:?}")))
    }

    pub fn usize(&self, key: &str) -> Result<usize, LmError> {
        self.opt_usize(key)?
            .ok_or_else(|| self.error(key, "missing"))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, LmError> {
        let Some(v) = self.meta.get(&self.key(key)) else {
            return Ok(None);
        };
        match v {
            Value::F32(x) => Ok(Some(*x as f64)),
            Value::F64(x) => Ok(Some(*x)),
            other => Err(self.error(key, format!("expected a float, found {other:?}"))),
        }
    }

    pub fn f64(&self, key: &str) -> Result<f64, LmError> {
        self.opt_f64(key)?.ok_or_else(|| self.error(key, "missing"))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, LmError> {
        match self.meta.get(&self.key(key)) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(self.error(key, format!("expected a string, found {other:?}"))),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, LmError> {
        match self.meta.get(&self.key(key)) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.error(key, format!("expected a bool, found {other:?}"))),
        }
    }

    /// RoPE scaling from `rope.scaling.*` (llama.cpp keys).
    pub fn rope_scaling(&self, context_length: usize) -> Result<RopeScaling, LmError> {
        let kind = self.opt_str("rope.scaling.type")?.unwrap_or("none");
        let factor = || -> Result<f64, LmError> { self.f64("rope.scaling.factor") };
        let original = self
            .opt_usize("rope.scaling.original_context_length")?
            .unwrap_or(context_length) as f64;
        match kind {
            "none" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear { factor: factor()? }),
            "yarn" => {
                let factor = factor()?;
                Ok(RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: original,
                    beta_fast: self.opt_f64("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                    beta_slow: self.opt_f64("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                    attention_factor: yarn_mscale(factor, 1.0),
                })
            }
            other => Err(LmError::UnsupportedRope {
                path: self.path.to_path_buf(),
                rope_type: other.to_string(),
            }),
        }
    }

    /// End-of-sequence ids: `tokenizer.ggml.eos_token_id` and, when present,
    /// the end-of-turn id.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut ids = Vec::new();
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
            let id = match self.meta.get(key) {
                Some(Value::U32(x)) => Some(*x),
                Some(Value::I32(x)) => u32::try_from(*x).ok(),
                Some(Value::U64(x)) => u32::try_from(*x).ok(),
                _ => None,
            };
            if let Some(id) = id
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        ids
    }
}

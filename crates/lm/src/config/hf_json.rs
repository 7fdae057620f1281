//! Typed reads of a Hugging Face `config.json`: missing fields and wrong
//! types become errors naming the field; RoPE scaling is parsed here.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use super::RopeScaling;
use crate::error::LmError;

/// Typed reads of a Hugging Face `config.json`.
pub struct HfConfig {
    pub path: PathBuf,
    pub json: Map<String, Json>,
}

impl HfConfig {
    pub fn read(path: &Path) -> Result<Self, LmError> {
        let text = std::fs::read_to_string(path).map_err(|source| LmError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json: Json = serde_json::from_str(&text).map_err(|source| LmError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        match json {
            Json::Object(json) => Ok(HfConfig {
                path: path.to_path_buf(),
                json,
            }),
            _ => Err(LmError::ConfigField {
                path: path.to_path_buf(),
                field: "(top level)".into(),
                msg: "expected a JSON object".into(),
            }),
        }
    }

    pub fn field_error(&self, field: &str, msg: impl Into<String>) -> LmError {
        LmError::ConfigField {
            path: self.path.clone(),
            field: field.to_string(),
            msg: msg.into(),
        }
    }

    pub fn unsupported(&self, field: &str, value: impl ToString, why: &str) -> LmError {
        LmError::UnsupportedConfig {
            path: self.path.clone(),
            field: field.to_string(),
            value: value.to_string(),
            why: why.to_string(),
        }
    }

    /// The value, with JSON `null` read as absent.
    pub fn get(&self, field: &str) -> Option<&Json> {
        self.json.get(field).filter(|v| !v.is_null())
    }

    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>, LmError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => json_usize(v).map(Some).ok_or_else(|| {
                self.field_error(field, format!("expected a non-negative integer, found {v}"))
            }),
        }
    }

    pub fn usize(&self, field: &str) -> Result<usize, LmError> {
        self.opt_usize(field)?
            .ok_or_else(|| self.field_error(field, "missing"))
    }

    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>, LmError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.field_error(field, format!("expected a number, found {v}"))),
        }
    }

    pub fn f64_or(&self, field: &str, default: f64) -> Result<f64, LmError> {
        Ok(self.opt_f64(field)?.unwrap_or(default))
    }

    pub fn bool_or(&self, field: &str, default: bool) -> Result<bool, LmError> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| {
                self.field_error(field, format!("expected true or false, found {v}"))
            }),
        }
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<&str>, LmError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.field_error(field, format!("expected a string, found {v}"))),
        }
    }

    /// The activation must be SiLU (`hidden_act` or `hidden_activation`).
    pub fn require_silu(&self) -> Result<(), LmError> {
        for field in ["hidden_act", "hidden_activation"] {
            if let Some(act) = self.opt_str(field)?
                && act != "silu"
                && act != "swish"
            {
                return Err(self.unsupported(field, act, "only silu (SwiGLU) is implemented"));
            }
        }
        Ok(())
    }

    /// Refuses fields that change the math in ways no family here handles.
    pub fn reject_common_unsupported(&self) -> Result<(), LmError> {
        if let Some(p) = self.opt_f64("partial_rotary_factor")?
            && p != 1.0
        {
            return Err(self.unsupported(
                "partial_rotary_factor",
                p,
                "RoPE on part of each head is not implemented",
            ));
        }
        // Knobs of other families that a llama-style stack would ignore.
        for field in [
            "attn_logit_softcapping",
            "final_logit_softcapping",
            "query_pre_attn_scalar",
            "attention_multiplier",
            "embedding_multiplier",
            "residual_multiplier",
            "logits_scaling",
            "sliding_window_pattern",
            "no_rope_layers",
        ] {
            if let Some(v) = self.get(field) {
                return Err(self.unsupported(field, v, "not part of the supported families' math"));
            }
        }
        if let Some(types) = self.get("layer_types") {
            let all_full = types
                .as_array()
                .is_some_and(|a| a.iter().all(|t| t.as_str() == Some("full_attention")));
            if !all_full {
                return Err(self.unsupported(
                    "layer_types",
                    types,
                    "only full attention in every layer is implemented",
                ));
            }
        }
        if let Some(q) = self
            .get("quantization_config")
            .or_else(|| self.get("quantization"))
        {
            return Err(self.unsupported(
                "quantization_config",
                q,
                "pre-quantized safetensors are not supported; use a GGUF file or --quantize",
            ));
        }
        Ok(())
    }

    /// `rope_theta` and `rope_scaling`, from the classic keys or from
    /// transformers 5's `rope_parameters`.
    pub fn rope(&self, default_theta: f64) -> Result<(f64, RopeScaling), LmError> {
        let params = self.get("rope_parameters").and_then(|p| p.as_object());
        let theta = match params
            .and_then(|p| p.get("rope_theta"))
            .and_then(|v| v.as_f64())
        {
            Some(t) => t,
            None => self.f64_or("rope_theta", default_theta)?,
        };
        let (field, scaling) = match self.get("rope_scaling") {
            Some(s) => ("rope_scaling", Some(s)),
            None => ("rope_parameters", self.get("rope_parameters")),
        };
        let scaling = match scaling {
            None => RopeScaling::None,
            Some(Json::Object(obj)) => self.rope_scaling(field, obj)?,
            Some(other) => {
                return Err(self.field_error(field, format!("expected an object, found {other}")));
            }
        };
        Ok((theta, scaling))
    }

    fn rope_scaling(&self, field: &str, obj: &Map<String, Json>) -> Result<RopeScaling, LmError> {
        let kind = obj
            .get("type")
            .or_else(|| obj.get("rope_type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let num = |key: &str| -> Result<Option<f64>, LmError> {
            match obj.get(key).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                    self.field_error(
                        &format!("{field}.{key}"),
                        format!("expected a number, found {v}"),
                    )
                }),
            }
        };
        let factor = || -> Result<f64, LmError> {
            num("factor")?.ok_or_else(|| self.field_error(&format!("{field}.factor"), "missing"))
        };
        let max_pos = self.opt_usize("max_position_embeddings")?.unwrap_or(0) as f64;
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear { factor: factor()? }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: num("low_freq_factor")?.unwrap_or(1.0),
                high_freq_factor: num("high_freq_factor")?.unwrap_or(4.0),
                original_max_position_embeddings: num("original_max_position_embeddings")?
                    .unwrap_or(8192.0),
            }),
            "yarn" => {
                let factor = factor()?;
                let attention_factor = match num("attention_factor")? {
                    Some(a) => a,
                    None => {
                        yarn_mscale(factor, num("mscale")?.unwrap_or(1.0))
                            / yarn_mscale(factor, num("mscale_all_dim")?.unwrap_or(0.0))
                    }
                };
                if let Some(t) = obj.get("truncate").and_then(|v| v.as_bool())
                    && !t
                {
                    return Err(self.unsupported(
                        &format!("{field}.truncate"),
                        t,
                        "only truncated YaRN correction ranges are implemented",
                    ));
                }
                Ok(RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: num("original_max_position_embeddings")?
                        .unwrap_or(max_pos),
                    beta_fast: num("beta_fast")?.unwrap_or(32.0),
                    beta_slow: num("beta_slow")?.unwrap_or(1.0),
                    attention_factor,
                })
            }
            other => Err(LmError::UnsupportedRope {
                path: self.path.clone(),
                rope_type: other.to_string(),
            }),
        }
    }

    /// `eos_token_id`: one id or a list.
    pub fn eos_ids(&self) -> Result<Vec<u32>, LmError> {
        eos_from_json(&self.path, self.get("eos_token_id"))
    }
}

pub(crate) fn yarn_mscale(factor: f64, mscale: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * mscale * factor.ln() + 1.0
    }
}

fn json_usize(v: &Json) -> Option<usize> {
    if let Some(u) = v.as_u64() {
        return usize::try_from(u).ok();
    }
    // Some configs write integers as 4096.0.
    v.as_f64()
        .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1e15)
        .map(|f| f as usize)
}

pub(crate) fn eos_from_json(path: &Path, v: Option<&Json>) -> Result<Vec<u32>, LmError> {
    let bad = |v: &Json| LmError::ConfigField {
        path: path.to_path_buf(),
        field: "eos_token_id".into(),
        msg: format!("expected a token id or a list of them, found {v}"),
    };
    let one = |v: &Json| {
        v.as_u64()
            .and_then(|u| u32::try_from(u).ok())
            .ok_or_else(|| bad(v))
    };
    match v {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(items)) => items.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

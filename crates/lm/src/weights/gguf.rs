//! Weights from a GGUF file (llama.cpp's format), memory-mapped. Quantized
//! tensors stay in their GGML block types; float tensors are decoded to
//! f32. Hugging Face names are translated to llama.cpp's (`blk.N.attn_q`),
//! and a Hugging Face expert tensor (`mlp.experts.E.up_proj.weight`) is one
//! entry of llama.cpp's stacked expert tensor (`ffn_up_exps`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use memmap2::Mmap;

use super::decode::{FloatKind, read_float};
use super::{Slice, TensorMeta, Weight, WeightSource};
use crate::error::{LmError, first_line};

struct Entry {
    dtype: GgmlDType,
    shape: Vec<usize>,
    /// Absolute byte offset in the file.
    start: usize,
    bytes: usize,
}

pub struct GgufSource {
    path: PathBuf,
    map: Mmap,
    metadata: HashMap<String, Value>,
    tensors: HashMap<String, Entry>,
}

fn bytes_for(dtype: GgmlDType, elems: usize) -> Option<usize> {
    if !elems.is_multiple_of(dtype.block_size()) {
        return None;
    }
    Some(elems / dtype.block_size() * dtype.type_size())
}

impl GgufSource {
    pub fn open(path: &Path) -> Result<Self, LmError> {
        let io = |source| LmError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let content = Content::read(&mut file).map_err(|e| gguf_error(path, e))?;
        // SAFETY: read-only map; see SafetensorsSource.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let mut tensors = HashMap::new();
        for (name, info) in content.tensor_infos {
            let shape = info.shape.dims().to_vec();
            let elems: usize = shape.iter().product();
            let bytes =
                bytes_for(info.ggml_dtype, elems).ok_or_else(|| LmError::BadWeightsFile {
                    path: path.to_path_buf(),
                    detail: format!(
                        "tensor `{name}`: {elems} elements are not whole {:?} blocks",
                        info.ggml_dtype
                    ),
                })?;
            let start = content.tensor_data_offset.saturating_add(info.offset);
            let end = start.saturating_add(bytes as u64);
            if end > map.len() as u64 {
                return Err(LmError::Truncated {
                    path: path.to_path_buf(),
                    detail: format!(
                        "tensor `{name}` needs bytes {start}..{end}, the file has {}",
                        map.len()
                    ),
                });
            }
            tensors.insert(
                name,
                Entry {
                    dtype: info.ggml_dtype,
                    shape,
                    start: start as usize,
                    bytes,
                },
            );
        }
        tracing::debug!(path = %path.display(), tensors = tensors.len(), "mapped gguf");
        Ok(GgufSource {
            path: path.to_path_buf(),
            map,
            metadata: content.metadata,
            tensors,
        })
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    /// Moves the metadata out (it holds the whole vocabulary; the weights
    /// do not need it once the config is read).
    pub fn take_metadata(&mut self) -> HashMap<String, Value> {
        std::mem::take(&mut self.metadata)
    }

    /// The stored tensor for a Hugging Face name, and the expert index when
    /// the name is one expert of a stacked tensor.
    fn resolve(&self, name: &str) -> Option<(&Entry, Option<usize>)> {
        let (gguf, expert) = gguf_name(name);
        let entry = self.tensors.get(&gguf)?;
        match expert {
            Some(e) if entry.shape.len() == 3 && e < entry.shape[0] => Some((entry, Some(e))),
            Some(_) => None,
            None => Some((entry, None)),
        }
    }

    /// Shape and bytes of `entry` after picking one expert.
    fn view<'a>(&'a self, entry: &Entry, expert: Option<usize>) -> (Vec<usize>, &'a [u8]) {
        let all = &self.map[entry.start..entry.start + entry.bytes];
        match expert {
            None => (entry.shape.clone(), all),
            Some(e) => {
                let per = entry.bytes / entry.shape[0];
                (entry.shape[1..].to_vec(), &all[e * per..(e + 1) * per])
            }
        }
    }
}

fn gguf_error(path: &Path, e: candle_core::Error) -> LmError {
    let text = first_line(&e);
    if text.contains("unknown dtype") {
        return LmError::UnsupportedQuantization {
            path: path.to_path_buf(),
            detail: text,
        };
    }
    if text.contains("failed to fill whole buffer") || text.contains("UnexpectedEof") {
        return LmError::Truncated {
            path: path.to_path_buf(),
            detail: format!("the GGUF header ends early ({text})"),
        };
    }
    LmError::BadWeightsFile {
        path: path.to_path_buf(),
        detail: text,
    }
}

/// Translates a Hugging Face tensor name to llama.cpp's; names without a
/// translation are looked up as they are (`rope_freqs.weight`).
pub(crate) fn gguf_name(hf: &str) -> (String, Option<usize>) {
    match hf {
        "model.embed_tokens.weight" => return ("token_embd.weight".into(), None),
        "model.norm.weight" => return ("output_norm.weight".into(), None),
        "lm_head.weight" => return ("output.weight".into(), None),
        _ => {}
    }
    let Some(rest) = hf.strip_prefix("model.layers.") else {
        return (hf.to_string(), None);
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return (hf.to_string(), None);
    };
    let (stem, suffix) = match rest.rsplit_once('.') {
        Some((stem, suffix @ ("weight" | "bias"))) => (stem, suffix),
        _ => return (hf.to_string(), None),
    };
    let fixed = match stem {
        "input_layernorm" => Some("attn_norm"),
        "post_attention_layernorm" => Some("ffn_norm"),
        "self_attn.q_proj" => Some("attn_q"),
        "self_attn.k_proj" => Some("attn_k"),
        "self_attn.v_proj" => Some("attn_v"),
        "self_attn.o_proj" => Some("attn_output"),
        "self_attn.q_norm" => Some("attn_q_norm"),
        "self_attn.k_norm" => Some("attn_k_norm"),
        "mlp.gate_proj" => Some("ffn_gate"),
        "mlp.up_proj" => Some("ffn_up"),
        "mlp.down_proj" => Some("ffn_down"),
        "mlp.gate" | "block_sparse_moe.gate" => Some("ffn_gate_inp"),
        _ => None,
    };
    if let Some(g) = fixed {
        return (format!("blk.{layer}.{g}.{suffix}"), None);
    }
    let expert = stem
        .strip_prefix("mlp.experts.")
        .or_else(|| stem.strip_prefix("block_sparse_moe.experts."))
        .and_then(|r| r.split_once('.'))
        .and_then(|(e, proj)| Some((e.parse::<usize>().ok()?, proj)));
    if let Some((e, proj)) = expert {
        let g = match proj {
            "gate_proj" | "w1" => Some("ffn_gate_exps"),
            "up_proj" | "w3" => Some("ffn_up_exps"),
            "down_proj" | "w2" => Some("ffn_down_exps"),
            _ => None,
        };
        if let Some(g) = g {
            return (format!("blk.{layer}.{g}.{suffix}"), Some(e));
        }
    }
    (hf.to_string(), None)
}

fn float_kind(dtype: GgmlDType) -> Option<FloatKind> {
    match dtype {
        GgmlDType::F32 => Some(FloatKind::F32),
        GgmlDType::F16 => Some(FloatKind::F16),
        GgmlDType::BF16 => Some(FloatKind::BF16),
        _ => None,
    }
}

/// Quantized blocks of `slice` as a QTensor. Rows are whole blocks, so a
/// row range is one contiguous read; a column range must fall on block
/// boundaries.
fn read_quantized(
    dtype: GgmlDType,
    bytes: &[u8],
    shape: &[usize],
    slice: &Slice,
) -> Result<QTensor, String> {
    let block = dtype.block_size();
    let width = shape.last().copied().unwrap_or(0);
    if !width.is_multiple_of(block) {
        return Err(format!(
            "rows of {width} elements are not whole {dtype:?} blocks"
        ));
    }
    let row_bytes = width / block * dtype.type_size();
    let out_shape = slice.apply(shape);
    // A 1-d tensor is one row: its "rows" are elements, cut like columns.
    let slice = match slice {
        Slice::Rows(r) if shape.len() == 1 => &Slice::Cols(r.clone()),
        other => other,
    };
    let data: Cow<'_, [u8]> = match slice {
        Slice::Full => Cow::Borrowed(bytes),
        Slice::Rows(r) => {
            let row: usize = shape.iter().skip(1).product::<usize>() / block * dtype.type_size();
            Cow::Borrowed(&bytes[r.start * row..r.end * row])
        }
        Slice::Cols(c) => {
            if !c.start.is_multiple_of(block) || !c.end.is_multiple_of(block) {
                return Err(format!(
                    "columns must fall on {dtype:?} block boundaries ({block})"
                ));
            }
            let (a, b) = (
                c.start / block * dtype.type_size(),
                c.end / block * dtype.type_size(),
            );
            let mut out = Vec::with_capacity(bytes.len() / row_bytes.max(1) * (b - a));
            for row in bytes.chunks_exact(row_bytes.max(1)) {
                out.extend_from_slice(&row[a..b]);
            }
            Cow::Owned(out)
        }
    };
    // candle views the bytes as blocks and asserts alignment; a map offset
    // that is not 4-aligned (legal in a hand-made file) gets an aligned copy.
    let words: Vec<u32>;
    let data: &[u8] = if (data.as_ptr() as usize).is_multiple_of(4) {
        &data
    } else {
        words = data
            .chunks(4)
            .map(|c| {
                let mut b = [0u8; 4];
                b[..c.len()].copy_from_slice(c);
                u32::from_ne_bytes(b)
            })
            .collect();
        // SAFETY: `words` holds at least data.len() initialized bytes, is
        // 4-aligned, and outlives `data`.
        unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), data.len()) }
    };
    let storage = QStorage::from_data(Cow::Borrowed(data), &Device::Cpu, dtype)
        .map_err(|e| first_line(&e))?;
    QTensor::new(storage, out_shape).map_err(|e| first_line(&e))
}

impl WeightSource for GgufSource {
    fn path(&self) -> &Path {
        &self.path
    }

    fn meta(&self, name: &str) -> Option<TensorMeta> {
        let (entry, expert) = self.resolve(name)?;
        let (shape, bytes) = self.view(entry, expert);
        Some(TensorMeta {
            shape,
            bytes: bytes.len() as u64,
            dtype: format!("{:?}", entry.dtype),
        })
    }

    fn missing(&self, name: &str) -> LmError {
        LmError::MissingTensor {
            path: self.path.clone(),
            tensor: format!("{} (GGUF `{}`)", name, gguf_name(name).0),
        }
    }

    fn load(&self, name: &str, slice: &Slice) -> Result<Weight, LmError> {
        let (entry, expert) = self.resolve(name).ok_or_else(|| self.missing(name))?;
        let (shape, bytes) = self.view(entry, expert);
        let bad_slice = |why: String| LmError::BadSlice {
            path: self.path.clone(),
            tensor: name.to_string(),
            slice: slice.to_string(),
            why,
        };
        slice.check(&shape).map_err(bad_slice)?;
        // F16 matrices stay f16 (as a QTensor) for the kernels' f16 dot:
        // half the memory and memory traffic of an f32 copy.
        let f16_matrix = entry.dtype == GgmlDType::F16 && shape.len() == 2;
        let weight = match float_kind(entry.dtype) {
            Some(kind) if !f16_matrix => Weight::Float(read_float(kind, bytes, &shape, slice)?),
            _ => Weight::Quantized(
                read_quantized(entry.dtype, bytes, &shape, slice).map_err(bad_slice)?,
            ),
        };
        let start = bytes.as_ptr() as usize - self.map.as_ptr() as usize;
        super::release(&self.map, start..start + bytes.len());
        Ok(weight)
    }

    fn total_bytes(&self) -> u64 {
        self.tensors.values().map(|e| e.bytes as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugging_face_names_map_to_llama_cpp_names() {
        assert_eq!(
            gguf_name("model.embed_tokens.weight").0,
            "token_embd.weight"
        );
        assert_eq!(
            gguf_name("model.layers.7.self_attn.k_proj.bias"),
            ("blk.7.attn_k.bias".to_string(), None)
        );
        assert_eq!(
            gguf_name("model.layers.0.mlp.experts.5.down_proj.weight"),
            ("blk.0.ffn_down_exps.weight".to_string(), Some(5))
        );
        assert_eq!(
            gguf_name("model.layers.1.block_sparse_moe.experts.2.w3.weight"),
            ("blk.1.ffn_up_exps.weight".to_string(), Some(2))
        );
        assert_eq!(gguf_name("rope_freqs.weight").0, "rope_freqs.weight");
    }
}

//! Mixtral (`block_sparse_moe`), from a Hugging Face directory and from a
//! llama-architecture GGUF with stacked experts. No Mixtral reference
//! logits exist among the fixtures, so the tests build one from the llama
//! fixture: every expert is a copy of llama's MLP. Top-k weights are
//! renormalized to sum to one, so whatever the router picks the layer
//! equals the dense MLP and the logits must equal llama's.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use common::{assert_close, expected, fixture};
use huddle_lm::{LoadOptions, Logits, Model};

const EXPERTS: usize = 3;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("huddle-lm-mixtral-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn router(layer: usize) -> Tensor {
    // Distinct per layer so that different tokens pick different experts.
    Tensor::randn(0f32, 1.0 + layer as f32, (EXPERTS, 96), &Device::Cpu).unwrap()
}

fn mixtral_hf_dir(dir: &Path) {
    let src = fixture("llama");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let c = cfg.as_object_mut().unwrap();
    c.insert("model_type".into(), "mixtral".into());
    c.insert(
        "architectures".into(),
        serde_json::json!(["MixtralForCausalLM"]),
    );
    c.insert("num_local_experts".into(), EXPERTS.into());
    c.insert("num_experts_per_tok".into(), 2.into());
    c.insert("sliding_window".into(), serde_json::Value::Null);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();

    let mut w: HashMap<String, Tensor> =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    for layer in 0..2 {
        let mlp = |p: &str| format!("model.layers.{layer}.mlp.{p}_proj.weight");
        let (gate, up, down) = (
            w.remove(&mlp("gate")).unwrap(),
            w.remove(&mlp("up")).unwrap(),
            w.remove(&mlp("down")).unwrap(),
        );
        let moe = format!("model.layers.{layer}.block_sparse_moe");
        w.insert(format!("{moe}.gate.weight"), router(layer));
        for e in 0..EXPERTS {
            w.insert(format!("{moe}.experts.{e}.w1.weight"), gate.clone());
            w.insert(format!("{moe}.experts.{e}.w3.weight"), up.clone());
            w.insert(format!("{moe}.experts.{e}.w2.weight"), down.clone());
        }
    }
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
}

#[test]
fn mixtral_directory_with_identical_experts_matches_dense_llama() {
    let tmp = TempDir::new("hf");
    mixtral_hf_dir(&tmp.0);
    let (tokens, want) = expected(&fixture("llama/expected.safetensors"));
    let mut model = Model::load(&tmp.0, &LoadOptions::default()).unwrap();
    assert_eq!(model.info().architecture, "mixtral");
    let got = model.forward(&tokens, Logits::All).unwrap();
    assert_close("mixtral (hf)", &got, &want, 1e-3);
}

/// llama-f32.gguf with each layer's MLP replaced by `EXPERTS` stacked
/// copies (Q8_0 when `quantized`) and an F32 router.
fn mixtral_gguf(path: &Path, quantized: bool) {
    let src = fixture("gguf/llama-f32.gguf");
    let mut file = std::fs::File::open(&src).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let t = content.tensor(&mut file, name, &Device::Cpu).unwrap();
        let ffn = ["ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"]
            .iter()
            .find(|s| name.ends_with(*s));
        match ffn {
            None => tensors.push((name.clone(), t)),
            Some(suffix) => {
                let full = t.dequantize(&Device::Cpu).unwrap();
                let stacked = Tensor::stack(&vec![full; EXPERTS], 0).unwrap();
                let dtype = if quantized {
                    GgmlDType::Q8_0
                } else {
                    GgmlDType::F32
                };
                let q = QTensor::quantize(&stacked, dtype).unwrap();
                let stem = suffix.trim_end_matches(".weight");
                tensors.push((name.replace(stem, &format!("{stem}_exps")), q));
            }
        }
    }
    for layer in 0..2 {
        let q = QTensor::quantize(&router(layer), GgmlDType::F32).unwrap();
        tensors.push((format!("blk.{layer}.ffn_gate_inp.weight"), q));
    }
    let mut metadata: Vec<(String, Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.push(("llama.expert_count".into(), Value::U32(EXPERTS as u32)));
    metadata.push(("llama.expert_used_count".into(), Value::U32(2)));
    let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut out, &meta_refs, &tensor_refs).unwrap();
}

#[test]
fn mixtral_gguf_with_stacked_experts_matches_dense_llama() {
    let tmp = TempDir::new("gguf");
    let (tokens, want) = expected(&fixture("llama/expected.safetensors"));
    for (quantized, tol) in [(false, 1e-3), (true, 5e-2)] {
        let path = tmp.0.join(format!("mixtral-{quantized}.gguf"));
        mixtral_gguf(&path, quantized);
        let mut model = Model::load(&path, &LoadOptions::default()).unwrap();
        let got = model.forward(&tokens, Logits::All).unwrap();
        assert_close(
            &format!("mixtral gguf (q8_0 experts: {quantized})"),
            &got,
            &want,
            tol,
        );
    }
}

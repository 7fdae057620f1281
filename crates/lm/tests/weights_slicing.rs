//! A weight source hands out a slice of a tensor (rows or columns) equal
//! to the same slice of the whole tensor: what a tensor-parallel rank will
//! ask for.

mod common;

use candle_core::{Device, Tensor};
use common::fixture;
use huddle_lm::LmError;
use huddle_lm::weights::gguf::GgufSource;
use huddle_lm::weights::safetensors::SafetensorsSource;
use huddle_lm::weights::{Slice, Weight, WeightSource};

fn float(w: Weight) -> Tensor {
    w.into_float().unwrap()
}

fn same(a: &Tensor, b: &Tensor) {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
}

#[test]
fn safetensors_row_and_column_slices_equal_narrowed_tensor() {
    // bf16 weights: decoded while slicing.
    let src = SafetensorsSource::open_dir(&fixture("qwen2")).unwrap();
    let name = "model.layers.1.self_attn.q_proj.weight";
    let full = float(src.load(name, &Slice::Full).unwrap());
    assert_eq!(full.dims(), &[96, 96]);
    same(
        &float(src.load(name, &Slice::Rows(32..64)).unwrap()),
        &full.narrow(0, 32, 32).unwrap(),
    );
    same(
        &float(src.load(name, &Slice::Cols(16..48)).unwrap()),
        &full.narrow(1, 16, 32).unwrap(),
    );
    let bias = "model.layers.1.self_attn.q_proj.bias";
    let full_bias = float(src.load(bias, &Slice::Full).unwrap());
    same(
        &float(src.load(bias, &Slice::Rows(48..96)).unwrap()),
        &full_bias.narrow(0, 48, 48).unwrap(),
    );
}

#[test]
fn safetensors_slices_across_split_files() {
    let src = SafetensorsSource::open_dir(&fixture("llama3")).unwrap();
    let name = "lm_head.weight";
    let full = float(src.load(name, &Slice::Full).unwrap());
    same(
        &float(src.load(name, &Slice::Rows(100..300)).unwrap()),
        &full.narrow(0, 100, 200).unwrap(),
    );
}

#[test]
fn gguf_quantized_slices_are_whole_blocks_of_the_full_tensor() {
    let src = GgufSource::open(&fixture("gguf/llama-q8_0.gguf")).unwrap();
    let name = "model.layers.0.mlp.gate_proj.weight";
    let w = src.load(name, &Slice::Full).unwrap();
    assert!(matches!(w, Weight::Quantized(_)));
    let full = float(w);
    assert_eq!(full.dims(), &[128, 96]);
    let rows = src.load(name, &Slice::Rows(32..96)).unwrap();
    assert!(matches!(rows, Weight::Quantized(_)));
    same(&float(rows), &full.narrow(0, 32, 64).unwrap());
    same(
        &float(src.load(name, &Slice::Cols(32..96)).unwrap()),
        &full.narrow(1, 32, 64).unwrap(),
    );
    let e = src.load(name, &Slice::Cols(5..40)).unwrap_err();
    assert!(matches!(e, LmError::BadSlice { .. }), "{e:?}");
    let e = src.load(name, &Slice::Rows(0..1000)).unwrap_err();
    assert!(matches!(e, LmError::BadSlice { .. }), "{e:?}");
}

#[test]
fn gguf_expert_of_a_stacked_tensor_reads_its_own_rows() {
    let src = GgufSource::open(&gguf_file_of("qwen3_moe")).unwrap();
    let e1 = "model.layers.0.mlp.experts.1.up_proj.weight";
    assert_eq!(src.meta(e1).unwrap().shape, vec![64, 96]);
    let one = float(src.load(e1, &Slice::Full).unwrap());
    let half = float(src.load(e1, &Slice::Rows(0..32)).unwrap());
    same(&half, &one.narrow(0, 0, 32).unwrap());
    let other = float(
        src.load("model.layers.0.mlp.experts.2.up_proj.weight", &Slice::Full)
            .unwrap(),
    );
    let d = (one - other)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d > 0.0, "experts 1 and 2 read the same bytes");
    assert!(
        src.meta("model.layers.0.mlp.experts.9.up_proj.weight")
            .is_none()
    );
}

/// The GGUF fixture made from HF fixture `hf`, per the manifest.
fn gguf_file_of(hf: &str) -> std::path::PathBuf {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("gguf/manifest.json")).unwrap())
            .unwrap();
    let file = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["hf"] == hf)
        .and_then(|f| f["file"].as_str())
        .unwrap_or_else(|| panic!("no GGUF fixture for {hf} in the manifest"));
    fixture(&format!("gguf/{file}"))
}

#[test]
fn missing_tensor_from_source_is_named() {
    let src = SafetensorsSource::open_dir(&fixture("llama")).unwrap();
    let e = src
        .load("model.layers.9.mlp.up_proj.weight", &Slice::Full)
        .unwrap_err();
    assert!(e.to_string().contains("model.layers.9.mlp.up_proj.weight"));
}

#[test]
fn hand_written_gguf_quantized_experts_and_vectors_slice_by_blocks() {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};

    let dir = std::env::temp_dir().join(format!("huddle-lm-slice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("q.gguf");
    let stacked = Tensor::randn(0f32, 1., (2, 32, 64), &Device::Cpu).unwrap();
    let vector = Tensor::randn(0f32, 1., 64, &Device::Cpu).unwrap();
    let qs = QTensor::quantize(&stacked, GgmlDType::Q8_0).unwrap();
    let qv = QTensor::quantize(&vector, GgmlDType::Q8_0).unwrap();
    let arch = Value::String("llama".into());
    gguf_file::write(
        &mut std::fs::File::create(&path).unwrap(),
        &[("general.architecture", &arch)],
        &[
            ("blk.0.ffn_up_exps.weight", &qs),
            ("output_norm.weight", &qv),
        ],
    )
    .unwrap();
    let stacked = qs.dequantize(&Device::Cpu).unwrap();
    let vector = qv.dequantize(&Device::Cpu).unwrap();

    let src = GgufSource::open(&path).unwrap();
    let expert = "model.layers.0.mlp.experts.1.up_proj.weight";
    let rows = src.load(expert, &Slice::Rows(16..32)).unwrap();
    assert!(matches!(rows, Weight::Quantized(_)));
    same(
        &float(rows),
        &stacked.get(1).unwrap().narrow(0, 16, 16).unwrap(),
    );
    let cols = float(src.load(expert, &Slice::Cols(32..64)).unwrap());
    same(&cols, &stacked.get(1).unwrap().narrow(1, 32, 32).unwrap());
    let half = float(src.load("model.norm.weight", &Slice::Rows(32..64)).unwrap());
    same(&half, &vector.narrow(0, 32, 32).unwrap());
    assert!(src.load("model.norm.weight", &Slice::Rows(8..40)).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

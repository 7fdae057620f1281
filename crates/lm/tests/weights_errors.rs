//! Every way a model on disk can be wrong gives one clear error naming the
//! file, the tensor or the field. Each test breaks a copy of a fixture in a
//! temp dir.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::fixture;
use huddle_lm::{LmError, LoadOptions, Logits, Model};

struct TempDir(PathBuf);

impl TempDir {
    fn copy_of(name: &str, tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("huddle-lm-err-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = fixture(name);
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            if e.path().is_file() {
                std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
            }
        }
        TempDir(dir)
    }

    fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
        let path = self.0.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(v.as_object_mut().unwrap());
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn load_err(path: &Path) -> LmError {
    match Model::load(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded although it is broken", path.display()),
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "error is not one line: {line}");
            eprintln!("error: {line}");
            e
        }
    }
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

#[test]
fn missing_tensor_names_tensor_and_file() {
    let t = TempDir::copy_of("llama", "missing");
    rewrite_weights(&t.0, |w| {
        w.remove("model.layers.1.mlp.up_proj.weight");
    });
    let e = load_err(&t.0);
    assert!(matches!(e, LmError::MissingTensor { .. }), "{e:?}");
    let line = e.to_string();
    assert!(
        line.contains("model.layers.1.mlp.up_proj.weight") && line.contains("model.safetensors"),
        "{line}"
    );
}

#[test]
fn truncated_safetensors_is_reported_as_truncated() {
    let t = TempDir::copy_of("llama", "trunc");
    let path = t.0.join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 1000).unwrap();
    let e = load_err(&t.0);
    assert!(matches!(e, LmError::Truncated { .. }), "{e:?}");
    assert!(e.to_string().contains("model.safetensors"));
}

#[test]
fn truncated_gguf_is_reported_as_truncated() {
    let dir = std::env::temp_dir().join(format!("huddle-lm-err-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("llama.gguf");
    std::fs::copy(fixture("gguf/llama-f32.gguf"), &path).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    let e = load_err(&path);
    std::fs::remove_dir_all(&dir).ok();
    assert!(matches!(e, LmError::Truncated { .. }), "{e:?}");
}

#[test]
fn shape_that_does_not_match_config_names_tensor_expected_and_found() {
    let t = TempDir::copy_of("llama", "shape");
    t.edit_config(|c| {
        c.insert("intermediate_size".into(), 64.into());
    });
    let e = load_err(&t.0);
    match &e {
        LmError::ShapeMismatch {
            path,
            tensor,
            expected,
            found,
        } => {
            assert!(path.ends_with("model.safetensors"), "{}", path.display());
            assert_eq!(tensor, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!(expected, &vec![64, 96]);
            assert_eq!(found, &vec![128, 96]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsupported_architecture_is_named() {
    let t = TempDir::copy_of("llama", "arch");
    t.edit_config(|c| {
        c.insert("model_type".into(), "gpt_neox".into());
    });
    let e = load_err(&t.0);
    assert!(
        matches!(e, LmError::UnsupportedArchitecture { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("gpt_neox"));
}

#[test]
fn unsupported_rope_type_is_named() {
    let t = TempDir::copy_of("llama3", "rope");
    t.edit_config(|c| {
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "longrope", "factor": 2.0}),
        );
    });
    let e = load_err(&t.0);
    assert!(matches!(e, LmError::UnsupportedRope { .. }), "{e:?}");
    assert!(e.to_string().contains("longrope"));
}

#[test]
fn fields_that_change_the_math_are_refused() {
    for (field, value) in [
        ("hidden_act", serde_json::json!("gelu")),
        ("partial_rotary_factor", serde_json::json!(0.5)),
        ("final_logit_softcapping", serde_json::json!(30.0)),
        (
            "layer_types",
            serde_json::json!(["full_attention", "sliding_attention"]),
        ),
    ] {
        let t = TempDir::copy_of("llama", "field");
        t.edit_config(|c| {
            c.insert(field.into(), value.clone());
        });
        let e = load_err(&t.0);
        assert!(matches!(e, LmError::UnsupportedConfig { .. }), "{e:?}");
        assert!(e.to_string().contains(field));
    }
    let t = TempDir::copy_of("qwen2", "qwen-window");
    t.edit_config(|c| {
        c.insert("use_sliding_window".into(), true.into());
    });
    assert!(load_err(&t.0).to_string().contains("use_sliding_window"));
}

#[test]
fn missing_or_mistyped_config_field_is_named() {
    let t = TempDir::copy_of("llama", "cfg-missing");
    t.edit_config(|c| {
        c.remove("hidden_size");
    });
    let e = load_err(&t.0);
    assert!(
        matches!(&e, LmError::ConfigField { field, .. } if field == "hidden_size"),
        "{e:?}"
    );

    let t = TempDir::copy_of("llama", "cfg-type");
    t.edit_config(|c| {
        c.insert("num_hidden_layers".into(), "two".into());
    });
    let e = load_err(&t.0);
    assert!(
        matches!(&e, LmError::ConfigField { field, .. } if field == "num_hidden_layers"),
        "{e:?}"
    );
}

#[test]
fn prompt_longer_than_context_is_refused_and_cache_untouched() {
    // The qwen3 fixture has a 128-token context.
    let mut model = Model::load(&fixture("qwen3"), &LoadOptions::default()).unwrap();
    model.forward(&[1, 2, 3], Logits::Last).unwrap();
    let long = vec![5u32; 126];
    let e = model.forward(&long, Logits::Last).unwrap_err();
    assert!(
        matches!(
            e,
            LmError::ContextOverflow {
                context_length: 128,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(model.kv_len(), 3);
    let e = model.forward(&[9999], Logits::Last).unwrap_err();
    assert!(
        matches!(e, LmError::TokenOutOfRange { token: 9999, .. }),
        "{e:?}"
    );
}

/// Overwrites `len` bytes right after the first occurrence of `marker`.
fn patch_after(path: &Path, marker: &[u8], skip: usize, bytes: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    let at = data
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("marker in file")
        + marker.len()
        + skip;
    data[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

#[test]
fn unsupported_gguf_quantization_and_architecture_are_named() {
    let dir = std::env::temp_dir().join(format!("huddle-lm-err-ggufq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // A tensor info is: name, n_dims u32, dims u64 each, type u32.
    let path = dir.join("quant.gguf");
    std::fs::copy(fixture("gguf/llama-f32.gguf"), &path).unwrap();
    patch_after(&path, b"output_norm.weight", 4 + 8, &20u32.to_le_bytes());
    let e = load_err(&path);
    assert!(
        matches!(e, LmError::UnsupportedQuantization { .. }),
        "{e:?}"
    );

    // general.architecture: value type u32, length u64, then the bytes.
    let path = dir.join("arch.gguf");
    std::fs::copy(fixture("gguf/llama-f32.gguf"), &path).unwrap();
    patch_after(&path, b"general.architecture", 4 + 8, b"falcn");
    let e = load_err(&path);
    assert!(
        matches!(e, LmError::UnsupportedArchitecture { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("falcn"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_path_that_is_not_a_model_says_so() {
    let e = load_err(&fixture("README.md"));
    assert!(matches!(e, LmError::NotAModel { .. }), "{e:?}");
    let e = load_err(Path::new("/nonexistent/model"));
    assert!(matches!(e, LmError::Io { .. }), "{e:?}");
}

#[test]
fn max_kv_size_not_above_the_kept_positions_is_refused() {
    let opts = LoadOptions {
        max_kv_size: Some(4),
        ..Default::default()
    };
    let e = Model::load(&fixture("llama"), &opts)
        .err()
        .expect("refused");
    assert!(matches!(e, LmError::BadOption(_)), "{e:?}");
}

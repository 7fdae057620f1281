//! Weights from a Hugging Face directory: one or many `*.safetensors`
//! files, memory-mapped; `model.safetensors.index.json` says which file
//! holds which tensor.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use super::decode::{FloatKind, read_float};
use super::{Slice, TensorMeta, Weight, WeightSource};
use crate::error::LmError;

struct MappedFile {
    path: PathBuf,
    map: Mmap,
}

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

pub struct SafetensorsSource {
    dir: PathBuf,
    files: Vec<MappedFile>,
    tensors: HashMap<String, Entry>,
    /// Tensor name -> file name, from the index (empty without one).
    index: HashMap<String, String>,
}

const INDEX: &str = "model.safetensors.index.json";

impl SafetensorsSource {
    /// Maps the weights of the Hugging Face directory `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self, LmError> {
        let (names, index) = weight_files(dir)?;
        let mut source = SafetensorsSource {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            tensors: HashMap::new(),
            index,
        };
        for name in names {
            source.add_file(&dir.join(name))?;
        }
        tracing::debug!(
            dir = %dir.display(),
            files = source.files.len(),
            tensors = source.tensors.len(),
            "mapped safetensors"
        );
        Ok(source)
    }

    fn add_file(&mut self, path: &Path) -> Result<(), LmError> {
        let io = |source| LmError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a model file changing under a running
        // process is outside what any loader can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| match e {
            SafeTensorError::MetadataIncompleteBuffer
            | SafeTensorError::InvalidHeaderLength
            | SafeTensorError::HeaderTooSmall => LmError::Truncated {
                path: path.to_path_buf(),
                detail: format!(
                    "{} bytes on disk do not hold what the safetensors header describes",
                    map.len()
                ),
            },
            other => LmError::BadWeightsFile {
                path: path.to_path_buf(),
                detail: other.to_string(),
            },
        })?;
        let data_start = 8 + header_len;
        let index = self.files.len();
        for (name, info) in metadata.tensors() {
            let (a, b) = info.data_offsets;
            self.tensors.insert(
                name,
                Entry {
                    file: index,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + a,
                    end: data_start + b,
                },
            );
        }
        self.files.push(MappedFile {
            path: path.to_path_buf(),
            map,
        });
        Ok(())
    }
}

impl SafetensorsSource {
    /// The file a missing tensor should have been in: the index's entry, or
    /// the only weight file, or else the directory.
    fn missing_path(&self, name: &str) -> PathBuf {
        if let Some(file) = self.index.get(name) {
            return self.dir.join(file);
        }
        match self.files.as_slice() {
            [only] => only.path.clone(),
            _ => self.dir.clone(),
        }
    }
}

/// The weight files of `dir`: from the index when there is one, else
/// `model.safetensors`, else every `*.safetensors` file.
type FileList = (Vec<String>, HashMap<String, String>);

fn weight_files(dir: &Path) -> Result<FileList, LmError> {
    let index = dir.join(INDEX);
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|source| LmError::Io {
            path: index.clone(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| LmError::Json {
                path: index.clone(),
                source,
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| LmError::ConfigField {
                path: index.clone(),
                field: "weight_map".into(),
                msg: "missing or not an object".into(),
            })?;
        let mut files: Vec<String> = Vec::new();
        let mut owner = HashMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| LmError::ConfigField {
                path: index.clone(),
                field: format!("weight_map.{tensor}"),
                msg: "expected a file name".into(),
            })?;
            if file.contains('/') || file.contains("..") {
                return Err(LmError::ConfigField {
                    path: index.clone(),
                    field: format!("weight_map.{tensor}"),
                    msg: format!("`{file}` is not a file in the model directory"),
                });
            }
            owner.insert(tensor.clone(), file.to_string());
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
        }
        files.sort();
        return Ok((files, owner));
    }
    if dir.join("model.safetensors").exists() {
        return Ok((vec!["model.safetensors".into()], HashMap::new()));
    }
    let entries = std::fs::read_dir(dir).map_err(|source| LmError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LmError::MissingTensor {
            path: dir.to_path_buf(),
            tensor: "*.safetensors (no weight files in the directory)".into(),
        });
    }
    Ok((files, HashMap::new()))
}

fn float_kind(dtype: Dtype) -> Option<FloatKind> {
    match dtype {
        Dtype::F32 => Some(FloatKind::F32),
        Dtype::F16 => Some(FloatKind::F16),
        Dtype::BF16 => Some(FloatKind::BF16),
        _ => None,
    }
}

impl WeightSource for SafetensorsSource {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn file_of(&self, name: &str) -> PathBuf {
        match self.tensors.get(name) {
            Some(e) => self.files[e.file].path.clone(),
            None => self.missing_path(name),
        }
    }

    fn meta(&self, name: &str) -> Option<TensorMeta> {
        self.tensors.get(name).map(|e| TensorMeta {
            shape: e.shape.clone(),
            bytes: (e.end - e.start) as u64,
            dtype: format!("{:?}", e.dtype),
        })
    }

    fn load(&self, name: &str, slice: &Slice) -> Result<Weight, LmError> {
        let entry = self.tensors.get(name).ok_or_else(|| self.missing(name))?;
        let file = &self.files[entry.file];
        let kind = float_kind(entry.dtype).ok_or_else(|| LmError::UnsupportedDtype {
            path: file.path.clone(),
            tensor: name.to_string(),
            dtype: format!("{:?}", entry.dtype),
        })?;
        slice.check(&entry.shape).map_err(|why| LmError::BadSlice {
            path: file.path.clone(),
            tensor: name.to_string(),
            slice: slice.to_string(),
            why,
        })?;
        // read_metadata validated offsets against the file length.
        let bytes = &file.map[entry.start..entry.end];
        let tensor = read_float(kind, bytes, &entry.shape, slice)?;
        super::release(&file.map, entry.start..entry.end);
        Ok(Weight::Float(tensor))
    }

    fn total_bytes(&self) -> u64 {
        self.tensors
            .values()
            .map(|e| (e.end - e.start) as u64)
            .sum()
    }
}

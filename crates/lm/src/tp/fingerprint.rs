//! The handshake before a sharded load: every rank must be about to read
//! the same model, or their slices would not add up to one model.

use std::io::Read;
use std::path::Path;

use huddle_comm::Group;

use crate::error::LmError;

/// Bytes read from the start of each weight file: the GGUF header and
/// metadata (or the safetensors header) and the first tensors.
const SAMPLE_BYTES: u64 = 1 << 20;

/// FNV-1a, enough to tell two different models apart (not a security hash:
/// the job token already keeps strangers out).
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LmError + '_ {
    move |source| LmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hash_file(h: u64, path: &Path) -> Result<u64, LmError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut head = Vec::new();
    file.take(SAMPLE_BYTES)
        .read_to_end(&mut head)
        .map_err(io_err(path))?;
    Ok(fnv(fnv(h, &len.to_le_bytes()), &head))
}

/// A hash of the model at `path`: for a directory, config.json and every
/// .safetensors file's size and first bytes; for a file, its size and first
/// bytes.
pub fn fingerprint(path: &Path) -> Result<u64, LmError> {
    let mut h = 0xcbf2_9ce4_8422_2325;
    if !path.is_dir() {
        return hash_file(h, path);
    }
    let mut files: Vec<_> = std::fs::read_dir(path)
        .map_err(io_err(path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "safetensors")
                || p.file_name().is_some_and(|n| n == "config.json")
        })
        .collect();
    files.sort();
    for file in files {
        let name = file.file_name().map(|n| n.as_encoded_bytes().to_vec());
        h = fnv(h, &name.unwrap_or_default());
        h = hash_file(h, &file)?;
    }
    Ok(h)
}

/// Gathers every rank's fingerprint of `path`; all ranks fail alike,
/// naming the first rank whose model differs from rank 0's.
pub fn check_same_model(path: &Path, group: &Group) -> Result<(), LmError> {
    if group.size() <= 1 {
        return Ok(());
    }
    let mine = fingerprint(path)?.to_le_bytes();
    let mut all = vec![0u8; 8 * group.size()];
    group.all_gather(&mine, &mut all).map_err(LmError::comm)?;
    let root = &all[..8];
    if let Some(rank) = (1..group.size()).find(|&r| &all[8 * r..8 * r + 8] != root) {
        return Err(LmError::ModelMismatch {
            path: path.to_path_buf(),
            rank,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_changes_with_the_model_bytes() {
        let dir = std::env::temp_dir().join(format!("huddle-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m.gguf");
        std::fs::write(&file, b"GGUF one").unwrap();
        let a = fingerprint(&file).unwrap();
        assert_eq!(a, fingerprint(&file).unwrap());
        std::fs::write(&file, b"GGUF two").unwrap();
        assert_ne!(a, fingerprint(&file).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

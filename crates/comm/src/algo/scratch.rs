//! Reused scratch memory: allocating (and faulting in) a fresh buffer per
//! call would cost more than moving the data on a fast link.

use std::sync::Mutex;

#[derive(Default)]
pub(crate) struct ScratchPool {
    free: Mutex<Vec<Vec<u64>>>,
}

/// Word-aligned scratch, returned to its pool when dropped.
pub(crate) struct Scratch<'p> {
    pool: &'p ScratchPool,
    pub words: Vec<u64>,
}

impl ScratchPool {
    /// At least `bytes` of scratch (contents unspecified).
    pub fn take(&self, bytes: usize) -> Scratch<'_> {
        let words = bytes.div_ceil(8);
        let mut v = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            // Prefer a buffer that is already large enough.
            match free.iter().position(|b| b.len() >= words) {
                Some(i) => free.swap_remove(i),
                None => free.pop().unwrap_or_default(),
            }
        };
        if v.len() < words {
            v.resize(words, 0);
        }
        Scratch {
            pool: self,
            words: v,
        }
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.words);
        let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
        // Keep a couple of buffers: enough for an overlapped call or two.
        if free.len() < 4 {
            free.push(v);
        }
    }
}

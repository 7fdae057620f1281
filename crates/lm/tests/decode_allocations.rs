//! A decode step allocates (almost) nothing: the decoder's buffers, the
//! KV cache and the kernels' activation scratch are reused from step to
//! step, so after a warm-up the only allocations left are the returned
//! logits tensor's, whatever the number of layers (SmolLM2 has 30; a
//! tensor per op per layer would be hundreds).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::smollm2;
use huddle_lm::{LoadOptions, Logits, Model};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per decoded token, for the whole process.
const MOST_PER_TOKEN: usize = 8;

#[test]
fn smollm2_decode_steps_allocate_only_their_logits() {
    let mut model = Model::load(&smollm2(), &LoadOptions::default()).expect("load SmolLM2");
    model
        .forward(&[1, 9690, 314, 253, 1517], Logits::Last)
        .expect("prompt");
    // Warm-up: buffers grow to a decode step's size.
    for tok in [28, 29, 30] {
        model.forward(&[tok], Logits::Last).expect("decode");
    }
    let steps = 16;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..steps {
        let logits = model.forward(&[40 + i], Logits::Last).expect("decode");
        assert_eq!(logits.dims1().expect("logits"), 49152);
    }
    let per_token = (ALLOCATIONS.load(Ordering::Relaxed) - before) / steps as usize;
    eprintln!("{per_token} allocations per decoded token");
    assert!(
        per_token <= MOST_PER_TOKEN,
        "{per_token} allocations per decoded token (at most {MOST_PER_TOKEN})"
    );
}

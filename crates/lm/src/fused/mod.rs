//! The model's hot path on plain f32 slices instead of candle tensor
//! operations: attention over the KV cache with its softmax in one pass
//! (`attention`), and buffers a layer reuses from step to step, so a decode
//! step allocates no temporaries beyond what candle's remaining ops need.
//!
//! Every function here computes each row of its output with the same code
//! whatever rows come with it: a prompt in pieces, in one pass, or a decode
//! step all give the same bits for the same position.

pub mod attention;

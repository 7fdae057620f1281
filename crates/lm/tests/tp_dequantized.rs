//! SmolLM2 split over 2, 3 and 4 ranks, with its weights dequantized to f32
//! by candle (CANDLE_DEQUANTIZE_ALL): without the 8-bit activation rounding
//! of quantized matmuls, tensor parallelism reproduces the single-rank
//! logits at every position to float precision (and so does the tiny
//! llama Q8_0 GGUF, whose head slices are off block boundaries on 2 and 4
//! ranks). One test per binary: the variable must be set before candle
//! first reads it.

mod common;
mod tp_support;

#[test]
fn dequantized_splits_over_2_3_4_ranks_are_exact_to_float_precision() {
    // SAFETY: the only test of this binary, run before anything has
    // started other threads that could read the environment.
    unsafe { std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1") };
    // 3 heads of 16 on 2 and 4 ranks: o_proj column slices off the Q8_0
    // blocks, read as the blocks around them and cut.
    let file = common::fixture("gguf/llama-q8_0.gguf");
    let (tokens, _) = common::expected(&common::fixture("llama/expected.safetensors"));
    tp_support::matches_single_rank(&file, &[2, 3, 4], &tokens, 1e-4);
    let path = common::smollm2();
    tp_support::matches_single_rank(&path, &[2, 3, 4], &tp_support::SMOLLM2_TOKENS, 1e-4);
}

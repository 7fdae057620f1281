//! A prompt fed in pieces, token by token, or in one pass gives the same
//! logits at every position, bit for bit, on the real SmolLM2 (Q4_1 GGUF):
//! the quantized products and the attention compute each row with the
//! same arithmetic whatever rows come with it.

mod common;

use common::smollm2;
use huddle_lm::{LoadOptions, Logits, Model};

fn prompt() -> Vec<u32> {
    // Varied ids after <|im_start|>; 41 tokens cross the kernels' 4-row
    // groups and 16-row tiles unevenly.
    std::iter::once(1)
        .chain((0..40u32).map(|i| 200 + (i * 7919) % 20000))
        .collect()
}

fn bits(rows: &[Vec<f32>]) -> Vec<u32> {
    rows.iter().flatten().map(|v| v.to_bits()).collect()
}

#[test]
fn smollm2_prompt_in_pieces_equals_one_pass_bit_for_bit() {
    let tokens = prompt();
    let mut model = Model::load(&smollm2(), &LoadOptions::default()).expect("load SmolLM2");
    let whole = model
        .forward(&tokens, Logits::All)
        .and_then(|t| Ok(t.to_vec2::<f32>()?))
        .expect("one pass");
    model.truncate_kv(0);
    let mut pieces = Vec::new();
    for range in [0..13, 13..14, 14..30, 30..tokens.len()] {
        let part = model
            .forward(&tokens[range], Logits::All)
            .and_then(|t| Ok(t.to_vec2::<f32>()?))
            .expect("piece");
        pieces.extend(part);
    }
    let worst = whole
        .iter()
        .flatten()
        .zip(pieces.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert_eq!(bits(&whole), bits(&pieces), "largest difference {worst}");
}

#[test]
fn smollm2_decode_step_equals_the_prompt_row_it_extends() {
    let tokens = prompt();
    let mut model = Model::load(&smollm2(), &LoadOptions::default()).expect("load SmolLM2");
    let last = |t: candle_core::Tensor| t.to_vec1::<f32>().expect("logits");
    let whole = last(model.forward(&tokens, Logits::Last).expect("one pass"));
    model.truncate_kv(0);
    model
        .forward(&tokens[..tokens.len() - 1], Logits::Last)
        .expect("prefix");
    let step = last(
        model
            .forward(&tokens[tokens.len() - 1..], Logits::Last)
            .expect("decode step"),
    );
    assert_eq!(bits(&[whole]), bits(&[step]));
}

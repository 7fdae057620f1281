//! llama.cpp's SentencePiece ("llama") tokenizer as a `tokenizers` pipeline.
//!
//! SentencePiece BPE merges, at each step, the adjacent pair whose joined
//! piece has the highest score; a BPE model whose merge ranks follow those
//! scores does the same (the construction transformers uses to convert
//! Llama's tokenizer.model). Spaces become `▁`, a `▁` is put before each
//! text fragment (llama.cpp's `add_space_prefix`, also after special
//! tokens), and characters outside the vocabulary fall back to `<0xNN>`
//! byte tokens.

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{DecoderWrapper, NormalizerWrapper};

const SPACE: &str = "\u{2581}";

/// The BPE merges that reproduce score-ordered SentencePiece merging:
/// every split of every piece into two pieces of the vocabulary, ordered by
/// the joined piece's score (highest first), then by the halves' ids.
pub fn merges_from_scores(tokens: &[&str], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(id, t)| (*t, id)).collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (split, _) in piece.char_indices().skip(1) {
            if let (Some(&left), Some(&right)) =
                (ids.get(&piece[..split]), ids.get(&piece[split..]))
            {
                merges.push((score, id, left, right));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then((a.1, a.2, a.3).cmp(&(b.1, b.2, b.3)))
    });
    merges
        .into_iter()
        .map(|(_, _, left, right)| (tokens[left].to_string(), tokens[right].to_string()))
        .collect()
}

/// The pipeline for a SentencePiece vocabulary with scores.
pub fn pipeline(
    tokens: &[&str],
    scores: &[f32],
    unk: Option<u32>,
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer, String> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string(), id as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges_from_scores(tokens, scores))
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk.and_then(|id| tokens.get(id as usize)) {
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder.build().map_err(|e| e.to_string())?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);

    let escape = Replace::new(" ", SPACE).map_err(|e| e.to_string())?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![Prepend::new(SPACE.to_string()).into(), escape.into()]).into()
    } else {
        escape.into()
    };
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(|e| e.to_string())?;

    let unescape = Replace::new(SPACE, " ").map_err(|e| e.to_string())?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        unescape.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_the_joined_piece_score() {
        let tokens = ["a", "b", "c", "ab", "bc", "abc"];
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let merges = merges_from_scores(&tokens, &scores);
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(l, r)| (l.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]
        );
    }
}

//! The pre-tokenizers that llama.cpp names in a GGUF's `tokenizer.ggml.pre`.
//!
//! llama.cpp does not store the split regexes in the file: it knows them by
//! name. Each entry below is that name's list of regexes, applied one after
//! another (every match and every gap between matches becomes a piece), as
//! in llama.cpp's `llm_tokenizer_bpe`. The regexes are written for
//! fancy-regex, which the `tokenizers` crate uses.

/// What a pre-tokenizer name means for splitting and for special tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreTokenizerSpec {
    /// Regexes applied in order; each splits every piece further.
    pub regexes: &'static [&'static str],
    /// A piece that is a whole vocabulary entry becomes that token without
    /// BPE merges (Llama 3 tokenizers).
    pub ignore_merges: bool,
    /// Whether a BOS token is added when the GGUF does not say.
    pub add_bos_default: bool,
}

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The spec for a `tokenizer.ggml.pre` value, or `None` for a name this
/// crate does not know (the caller reports it: guessing would silently
/// produce different token ids).
pub fn pre_tokenizer_spec(name: &str) -> Option<PreTokenizerSpec> {
    let plain = |regexes| PreTokenizerSpec {
        regexes,
        ignore_merges: false,
        add_bos_default: false,
    };
    Some(match name {
        // An empty name is what llama.cpp calls "default" (with a warning).
        "" | "default" => plain(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => {
            PreTokenizerSpec {
                regexes: &[LLAMA3],
                ignore_merges: true,
                add_bos_default: true,
            }
        }
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => plain(&[QWEN2]),
        // Individual digits first, then GPT-2's split: SmolLM's
        // tokenizer.json has Digits(individual_digits) before ByteLevel.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            plain(&[r"\p{N}", GPT2])
        }
        "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" => plain(&[GPT2]),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_pre_tokenizer_is_not_guessed() {
        assert!(pre_tokenizer_spec("no-such-pre").is_none());
    }

    #[test]
    fn smollm_splits_digits_before_gpt2_regex() {
        let spec = pre_tokenizer_spec("smollm").expect("smollm is known");
        assert_eq!(spec.regexes, &[r"\p{N}", GPT2]);
        assert!(!spec.ignore_merges);
    }

    #[test]
    fn llama_bpe_ignores_merges_and_adds_bos() {
        let spec = pre_tokenizer_spec("llama-bpe").expect("llama-bpe is known");
        assert!(spec.ignore_merges && spec.add_bos_default);
    }
}

//! Token ids against the references: llama.cpp's for the SmolLM2 GGUF,
//! the `tokenizers` crate's for Hugging Face directories.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use huddle_lm::tokenizer::{Tokenizer, TokenizerError};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    let path = manifest_dir().join("tests/fixtures").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/make_fixtures.py",
        path.display()
    );
    path
}

fn smollm2() -> Tokenizer {
    Tokenizer::from_gguf(&common::smollm2()).expect("SmolLM2 tokenizer loads")
}

/// Texts with digits, Unicode, whitespace runs, newlines and special tokens.
const TEXTS: &[&str] = &[
    "Hello world! 123",
    "The year 2024 had 366 days; π ≈ 3.14159.",
    "Café déjà vu. Ünïcödé: 日本語のテキスト, emoji 🦀🎉 and Ελληνικά.",
    "  multiple   spaces\tand\ttabs\n\n\nnewlines   \n end  ",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "don't won't I'll we've they're she'd I'm",
    "fn main() { println!(\"{}\", 1_000_000); }",
    "",
];

#[test]
fn smollm2_ids_match_llama_cpp_fixture() {
    let path = manifest_dir().join("tests/fixtures/smollm2_tokens.json");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/tokenize_reference.py (llama.cpp's ids)",
        path.display()
    );
    let text = std::fs::read_to_string(&path).expect("fixture readable");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("fixture is JSON");
    assert!(!cases.is_empty(), "{} has no cases", path.display());
    let tokenizer = smollm2();
    for case in &cases {
        let text = case["text"].as_str().expect("case has text");
        let parse_special = case
            .get("parse_special")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        let add_special = case
            .get("add_special")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .expect("case has ids")
            .iter()
            .map(|v| v.as_u64().expect("id is a number") as u32)
            .collect();
        let ids = tokenizer
            .encode_with(text, add_special, parse_special)
            .expect("encodes");
        assert_eq!(
            ids, expected,
            "text {text:?} (parse_special {parse_special})"
        );
    }
}

#[test]
fn smollm2_splits_digits_one_by_one() {
    // llama.cpp's `smollm` pre-tokenizer: " 123" is " ", "1", "2", "3";
    // GPT-2's default split would keep " 123" together.
    let tokenizer = smollm2();
    assert_eq!(
        tokenizer
            .encode("Hello world! 123", false)
            .expect("encodes"),
        vec![19556, 905, 17, 216, 33, 34, 35]
    );
    assert_eq!(
        tokenizer
            .encode("The capital of France is", false)
            .expect("encodes"),
        vec![504, 3575, 282, 4649, 314]
    );
    assert_eq!(
        tokenizer
            .encode("  multiple   spaces", false)
            .expect("encodes"),
        vec![216, 2701, 256, 5600]
    );
}

#[test]
fn smollm2_special_tokens_parse_only_when_asked() {
    let tokenizer = smollm2();
    let parsed = tokenizer
        .encode_with("<|im_start|>user", false, true)
        .expect("encodes");
    assert_eq!(parsed[0], 1);
    assert_eq!(parsed.len(), 2);
    let literal = tokenizer
        .encode_with("<|im_start|>user", false, false)
        .expect("encodes");
    assert!(!literal.contains(&1), "{literal:?}");
    assert!(literal.len() > 2);
}

#[test]
fn smollm2_metadata_gives_bos_eos_and_template() {
    let tokenizer = smollm2();
    assert_eq!(tokenizer.bos_token().map(|t| t.id), Some(1));
    assert_eq!(
        tokenizer.eos_token().map(|t| t.text.as_str()),
        Some("<|im_end|>")
    );
    assert!(tokenizer.eos_token_ids().contains(&2));
    assert!(
        tokenizer
            .chat_template()
            .is_some_and(|t| t.contains("<|im_start|>"))
    );
    // add_bos_token is false in this GGUF: nothing is added.
    assert_eq!(
        tokenizer.encode("Hi", true).expect("encodes"),
        tokenizer.encode("Hi", false).expect("encodes")
    );
}

#[test]
fn smollm2_decoding_round_trips_and_skips_specials() {
    let tokenizer = smollm2();
    for text in TEXTS {
        let ids = tokenizer.encode(text, false).expect("encodes");
        assert_eq!(&tokenizer.decode(&ids, false).expect("decodes"), text);
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| tokenizer.token_bytes(id).to_vec())
            .collect();
        assert_eq!(bytes, text.as_bytes(), "token bytes of {text:?}");
    }
    let ids = tokenizer
        .encode("<|im_start|>Hi<|im_end|>", false)
        .expect("encodes");
    assert_eq!(tokenizer.decode(&ids, true).expect("decodes"), "Hi");
}

fn hf_fixture_dirs() -> Vec<PathBuf> {
    let root = fixture("");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("fixtures readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("tokenizer.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no fixture directory with tokenizer.json under {}",
        root.display()
    );
    dirs
}

#[test]
fn hf_directory_ids_match_the_tokenizers_reference() {
    for dir in hf_fixture_dirs() {
        let ours = Tokenizer::from_hf_dir(&dir).expect("fixture tokenizer loads");
        let reference =
            tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).expect("reference loads");
        for text in TEXTS {
            let expected = reference.encode(*text, true).expect("reference encodes");
            let ids = ours.encode(text, true).expect("encodes");
            assert_eq!(ids, expected.get_ids(), "{}: {text:?}", dir.display());
            let expected_text = reference.decode(&ids, true).expect("reference decodes");
            assert_eq!(
                ours.decode(&ids, true).expect("decodes"),
                expected_text,
                "{}",
                dir.display()
            );
        }
    }
}

#[test]
fn hf_directory_ids_match_recorded_transformers_ids() {
    // fixtures/hf_tokens.json: ids from Python's transformers for the
    // tokenizer.json that every fixture directory shares.
    let path = fixture("hf_tokens.json");
    let text = std::fs::read_to_string(&path).expect("fixture readable");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("recorded ids are JSON");
    assert!(!cases.is_empty());
    let reference = std::fs::read(fixture("llama/tokenizer.json")).expect("readable");
    for dir in hf_fixture_dirs() {
        if std::fs::read(dir.join("tokenizer.json")).expect("readable") != reference {
            continue;
        }
        let ours = Tokenizer::from_hf_dir(&dir).expect("fixture tokenizer loads");
        for case in &cases {
            let text = case["text"].as_str().expect("case has text");
            let expected: Vec<u32> =
                serde_json::from_value(case["ids"].clone()).expect("ids are numbers");
            assert_eq!(
                ours.encode(text, false).expect("encodes"),
                expected,
                "{}: {text:?}",
                dir.display()
            );
            assert_eq!(
                ours.decode(&expected, false).expect("decodes"),
                text,
                "{}",
                dir.display()
            );
        }
    }
}

#[test]
fn gguf_fixtures_match_recorded_transformers_ids() {
    let text = std::fs::read_to_string(fixture("hf_tokens.json")).expect("fixture readable");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("recorded ids are JSON");
    let mut checked = 0;
    for entry in std::fs::read_dir(fixture("gguf"))
        .expect("readable")
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "gguf") {
            continue;
        }
        let tokenizer = Tokenizer::from_gguf(&path).expect("GGUF tokenizer loads");
        for case in &cases {
            let text = case["text"].as_str().expect("case has text");
            let expected: Vec<u32> =
                serde_json::from_value(case["ids"].clone()).expect("ids are numbers");
            assert_eq!(
                tokenizer.encode(text, false).expect("encodes"),
                expected,
                "{}: {text:?}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "no GGUF fixtures");
}

#[test]
fn hf_directory_reads_special_tokens_and_template() {
    let tokenizer = Tokenizer::from_hf_dir(&fixture("llama")).expect("fixture tokenizer loads");
    let im_end = tokenizer
        .token_to_id("<|im_end|>")
        .expect("<|im_end|> in vocab");
    assert!(tokenizer.is_special(im_end));
    assert!(
        tokenizer
            .chat_template()
            .is_some_and(|t| t.contains("<|im_start|>"))
    );
    assert!(!tokenizer.eos_token_ids().is_empty());
}

#[test]
fn gguf_fixture_tokenizes_like_its_hf_directory() {
    let gguf_dir = fixture("gguf");
    let mut checked = 0;
    for (gguf, dir) in [("llama-f32.gguf", "llama"), ("qwen2-f32.gguf", "qwen2")] {
        let gguf = gguf_dir.join(gguf);
        if !gguf.is_file() {
            continue;
        }
        let from_gguf = Tokenizer::from_gguf(&gguf).expect("GGUF tokenizer loads");
        let from_hf = Tokenizer::from_hf_dir(&fixture(dir)).expect("HF tokenizer loads");
        for text in TEXTS {
            assert_eq!(
                from_gguf.encode(text, false).expect("encodes"),
                from_hf.encode(text, false).expect("encodes"),
                "{}: {text:?}",
                gguf.display()
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "no GGUF fixtures under {}", gguf_dir.display());
}

fn minimal_metadata(pre: &str) -> HashMap<String, Value> {
    let strings =
        |v: &[&str]| Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect());
    HashMap::from([
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
        (
            "tokenizer.ggml.tokens".to_string(),
            strings(&["a", "b", "ab", "<s>"]),
        ),
        ("tokenizer.ggml.merges".to_string(), strings(&["a b"])),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(vec![
                Value::I32(1),
                Value::I32(1),
                Value::I32(1),
                Value::I32(3),
            ]),
        ),
        ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(3)),
        (
            "tokenizer.ggml.add_bos_token".to_string(),
            Value::Bool(true),
        ),
    ])
}

#[test]
fn unknown_pre_tokenizer_is_an_error_naming_it() {
    let err = Tokenizer::from_gguf_metadata(Path::new("x.gguf"), &minimal_metadata("bogus-pre"))
        .expect_err("rejected");
    assert!(
        matches!(err, TokenizerError::UnknownPreTokenizer { ref name, .. } if name == "bogus-pre")
    );
    assert!(err.to_string().contains("bogus-pre"));
}

#[test]
fn gguf_metadata_builds_bpe_with_bos() {
    let tokenizer = Tokenizer::from_gguf_metadata(Path::new("x.gguf"), &minimal_metadata("gpt2"))
        .expect("builds");
    assert_eq!(tokenizer.encode("ab", true).expect("encodes"), vec![3, 2]);
    assert_eq!(tokenizer.encode("ab", false).expect("encodes"), vec![2]);
    assert!(tokenizer.is_special(3));
}

#[test]
fn missing_gguf_metadata_names_the_key() {
    let mut meta = minimal_metadata("gpt2");
    meta.remove("tokenizer.ggml.merges");
    let err = Tokenizer::from_gguf_metadata(Path::new("x.gguf"), &meta).expect_err("rejected");
    assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");
}

/// A tiny SentencePiece vocabulary: (piece, score, llama.cpp token type).
const SPM_VOCAB: &[(&str, f32, i32)] = &[
    ("<unk>", 0.0, 2),
    ("<s>", 0.0, 3),
    ("</s>", 0.0, 3),
    ("<0x0A>", 0.0, 6),
    ("<0x21>", 0.0, 6),
    ("\u{2581}", -1.0, 1),
    ("h", -2.0, 1),
    ("e", -2.0, 1),
    ("l", -2.0, 1),
    ("o", -2.0, 1),
    ("w", -2.0, 1),
    ("r", -2.0, 1),
    ("d", -2.0, 1),
    ("ll", -3.0, 1),
    ("he", -4.0, 1),
    ("llo", -5.0, 1),
    ("\u{2581}h", -7.0, 1),
    ("\u{2581}he", -8.0, 1),
    ("hello", -9.0, 1),
    ("\u{2581}hello", -10.0, 1),
    ("\u{2581}w", -11.0, 1),
    ("or", -12.0, 1),
    ("ld", -13.0, 1),
];

fn sentencepiece_metadata() -> HashMap<String, Value> {
    HashMap::from([
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("llama".into()),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(
                SPM_VOCAB
                    .iter()
                    .map(|t| Value::String(t.0.to_string()))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.scores".to_string(),
            Value::Array(SPM_VOCAB.iter().map(|t| Value::F32(t.1)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(SPM_VOCAB.iter().map(|t| Value::I32(t.2)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".to_string(), Value::U32(0)),
    ])
}

#[test]
fn sentencepiece_gguf_merges_by_score_with_byte_fallback() {
    let tokenizer = Tokenizer::from_gguf_metadata(Path::new("spm.gguf"), &sentencepiece_metadata())
        .expect("builds");
    // "▁hello": ll, he, llo, ▁he, ▁hello by descending score.
    assert_eq!(tokenizer.encode("hello", false).expect("encodes"), vec![19]);
    // SentencePiece GGUFs add BOS by default.
    assert_eq!(
        tokenizer.encode("hello world", true).expect("encodes"),
        vec![1, 19, 20, 21, 22]
    );
    // "!" and "\n" are not pieces: byte fallback.
    assert_eq!(
        tokenizer.encode("hello!\n", false).expect("encodes"),
        vec![19, 4, 3]
    );
    // A word after a special token gets its space prefix too (llama.cpp).
    assert_eq!(
        tokenizer.encode("<s>hello", false).expect("encodes"),
        vec![1, 19]
    );
    assert_eq!(
        tokenizer
            .decode(&[1, 19, 20, 21, 22], true)
            .expect("decodes"),
        "hello world"
    );
    assert_eq!(
        tokenizer.decode(&[19, 4, 3], false).expect("decodes"),
        "hello!\n"
    );
    assert_eq!(tokenizer.token_bytes(19), b" hello");
    assert_eq!(tokenizer.token_bytes(3), b"\n");
}

/// llama.cpp b11434's ids (llama_tokenize, no BOS, special parsing on) for
/// the fixture vocabulary under each pre-tokenizer name; the GGUF was
/// llama-f32.gguf with only `tokenizer.ggml.pre` changed.
const PRE_TEXTS: &[&str] = &[
    "Hello world! 123",
    "3.14159 and 42,000",
    "a   b\t\tc\n\n\nd",
    "It'S WE'LL i'm <$+^~|> 1234567",
    "def f(x):\n    return x  # ok\n",
];
const GPT2_IDS: &[&[u32]] = &[
    &[370, 358, 81, 348, 3, 223, 19, 20, 21],
    &[21, 16, 19, 22, 19, 23, 27, 285, 223, 22, 20, 14, 18, 18, 18],
    &[67, 263, 283, 200, 200, 69, 417, 201, 70],
    &[
        486, 9, 53, 223, 57, 39, 9, 46, 46, 223, 75, 477, 223, 30, 6, 13, 64, 96, 94, 32, 223, 19,
        20, 21, 22, 23, 24, 25,
    ],
    &[
        282, 72, 223, 72, 10, 90, 340, 281, 223, 269, 86, 87, 84, 80, 319, 223, 223, 5, 277, 77,
        201,
    ],
];
const QWEN2_AND_LLAMA3_IDS: &[&[u32]] = &[
    &[370, 358, 81, 348, 3, 223, 19, 20, 21],
    &[21, 16, 19, 22, 19, 23, 27, 285, 223, 22, 20, 14, 18, 18, 18],
    &[67, 263, 283, 200, 200, 69, 417, 201, 70],
    &[
        486, 9, 53, 223, 57, 39, 9, 46, 46, 223, 75, 477, 223, 30, 6, 13, 64, 96, 94, 32, 223, 19,
        20, 21, 22, 23, 24, 25,
    ],
    &[
        282, 72, 223, 72, 10, 90, 340, 201, 263, 223, 223, 269, 86, 87, 84, 80, 319, 223, 223, 5,
        277, 77, 201,
    ],
];
const DEFAULT_IDS: &[&[u32]] = &[
    &[370, 358, 81, 348, 3, 223, 19, 20, 21],
    &[21, 16, 19, 22, 19, 23, 27, 285, 223, 22, 20, 14, 18, 18, 18],
    &[67, 263, 283, 200, 200, 69, 417, 201, 70],
    &[
        486, 9, 53, 223, 57, 39, 9, 46, 46, 223, 75, 9, 79, 223, 30, 6, 13, 64, 96, 94, 32, 223,
        19, 20, 21, 22, 23, 24, 25,
    ],
    &[
        282, 72, 223, 72, 10, 90, 340, 281, 223, 269, 86, 87, 84, 80, 319, 263, 5, 277, 77, 201,
    ],
];

#[test]
fn gguf_pre_tokenizers_match_llama_cpp() {
    let path = fixture("gguf/llama-f32.gguf");
    let mut file = std::fs::File::open(&path).expect("fixture opens");
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).expect("GGUF parses");
    for (pre, expected) in [
        ("gpt-2", GPT2_IDS),
        ("qwen2", QWEN2_AND_LLAMA3_IDS),
        ("llama-bpe", QWEN2_AND_LLAMA3_IDS),
        ("default", DEFAULT_IDS),
    ] {
        let mut metadata = content.metadata.clone();
        metadata.insert(
            "tokenizer.ggml.pre".to_string(),
            Value::String(pre.to_string()),
        );
        let tokenizer = Tokenizer::from_gguf_metadata(&path, &metadata).expect("builds");
        for (text, ids) in PRE_TEXTS.iter().zip(expected) {
            assert_eq!(
                &tokenizer.encode(text, false).expect("encodes"),
                ids,
                "pre {pre}: {text:?}"
            );
        }
    }
}

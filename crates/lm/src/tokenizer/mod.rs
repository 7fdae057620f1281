//! Text to token ids and back, with the ids the model was trained on.
//!
//! A Hugging Face directory's tokenizer.json is loaded with the `tokenizers`
//! crate as is. A GGUF file holds only llama.cpp's description (vocabulary,
//! merges or scores, token types and a pre-tokenizer *name*), from which an
//! equivalent `tokenizers` pipeline is built, so both sources give llama.cpp's and
//! transformers' ids. Around that pipeline this type keeps what generation
//! needs: BOS/EOS, the chat template and the bytes of every token.

mod gguf;
mod hf;
mod pieces;
mod pre;
mod spm;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use pieces::{PieceEncoding, TokenPieces};
pub use pre::{PreTokenizerSpec, pre_tokenizer_spec};

/// What went wrong loading or running a tokenizer; names the file and the
/// field at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: field `{field}`: {msg}")]
    Field {
        path: PathBuf,
        field: String,
        msg: String,
    },
    #[error("{path}: missing GGUF metadata `{key}`")]
    MissingMetadata { path: PathBuf, key: String },
    #[error(
        "{path}: unknown pre-tokenizer `{name}` in tokenizer.ggml.pre (known: smollm, llama-bpe, qwen2, gpt2, default and their aliases)"
    )]
    UnknownPreTokenizer { path: PathBuf, name: String },
    #[error(
        "{path}: tokenizer model `{model}` is not supported (only gpt2 byte-level BPE and llama SentencePiece)"
    )]
    UnsupportedModel { path: PathBuf, model: String },
    #[error("{path}: {msg}")]
    Gguf { path: PathBuf, msg: String },
    #[error("{path}: no tokenizer.json in the model directory")]
    NoTokenizerJson { path: PathBuf },
    #[error("tokenizer: {0}")]
    Tokenizers(String),
}

/// A special token: its id and its text (what templates write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub id: u32,
    pub text: String,
}

/// Where a tokenizer came from (decides who adds BOS/EOS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// tokenizer.json's post-processor adds special tokens.
    HuggingFace,
    /// GGUF: BOS/EOS are added here, following the metadata's flags.
    Gguf { add_bos: bool, add_eos: bool },
}

/// A loaded tokenizer and the generation facts that come with it.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same pipeline with special-token parsing off, built on first use.
    literal: OnceLock<tokenizers::Tokenizer>,
    origin: Origin,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    eos_ids: Vec<u32>,
    chat_template: Option<String>,
    pieces: TokenPieces,
    encoding: PieceEncoding,
    special: Vec<bool>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eos_ids", &self.eos_ids)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads from a Hugging Face directory or a `.gguf` file.
    pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
        if path.is_dir() {
            Self::from_hf_dir(path)
        } else {
            Self::from_gguf(path)
        }
    }

    /// Loads tokenizer.json, tokenizer_config.json (BOS/EOS, chat template)
    /// and generation_config.json (EOS ids) from a model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        hf::load(dir)
    }

    /// Builds the tokenizer that a GGUF file's metadata describes.
    pub fn from_gguf(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let file = std::fs::File::open(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = std::io::BufReader::new(file);
        let content =
            candle_core::quantized::gguf_file::Content::read(&mut reader).map_err(|e| {
                TokenizerError::Gguf {
                    path: path.to_path_buf(),
                    msg: e.to_string(),
                }
            })?;
        gguf::build(path, &content.metadata)
    }

    /// Builds from already-read GGUF metadata; `path` is only for messages.
    pub fn from_gguf_metadata(
        path: &Path,
        metadata: &std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>,
    ) -> Result<Tokenizer, TokenizerError> {
        gguf::build(path, metadata)
    }

    /// Token ids of `text`. `add_special` adds what the model expects
    /// around a plain text (BOS for most); special tokens written in the
    /// text (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        self.encode_with(text, add_special, true)
    }

    /// Like [`Tokenizer::encode`]; with `parse_special` false, special
    /// tokens written in the text are tokenized as plain text (for user
    /// input that must not inject control tokens).
    pub fn encode_with(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let pipeline = if parse_special {
            &self.inner
        } else {
            self.literal.get_or_init(|| {
                let mut literal = self.inner.clone();
                literal.set_encode_special_tokens(true);
                literal
            })
        };
        let hf_specials = add_special && self.origin == Origin::HuggingFace;
        let encoding = pipeline
            .encode_fast(text, hf_specials)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))?;
        let ids = encoding.get_ids();
        let Origin::Gguf { add_bos, add_eos } = self.origin else {
            return Ok(ids.to_vec());
        };
        let bos = self
            .bos
            .as_ref()
            .filter(|_| add_special && add_bos)
            .map(|t| t.id);
        let eos = self
            .eos
            .as_ref()
            .filter(|_| add_special && add_eos)
            .map(|t| t.id);
        let mut out = Vec::with_capacity(ids.len() + 2);
        out.extend(bos);
        out.extend_from_slice(ids);
        out.extend(eos);
        Ok(out)
    }

    /// The text of `ids`; `skip_special` leaves out special tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Tokenizers(e.to_string()))
    }

    /// The raw bytes of one token (possibly part of a UTF-8 character).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.pieces.get(id)
    }

    /// How token strings map to bytes. SentencePiece-style vocabularies
    /// (`Metaspace`) mark a word start with a space that the first word of
    /// a text does not show.
    pub fn piece_encoding(&self) -> PieceEncoding {
        self.encoding
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos_token(&self) -> Option<&SpecialToken> {
        self.bos.as_ref()
    }

    pub fn eos_token(&self) -> Option<&SpecialToken> {
        self.eos.as_ref()
    }

    /// Every id the tokenizer files say ends generation (EOS, EOT, and
    /// generation_config.json's list), without duplicates.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The Jinja chat template that came with the tokenizer, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The underlying `tokenizers` pipeline (special-token parsing on).
    pub fn pipeline(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The parts common to both origins, assembled by the loaders.
struct Parts {
    inner: tokenizers::Tokenizer,
    origin: Origin,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    extra_eos_ids: Vec<u32>,
    chat_template: Option<String>,
    encoding: PieceEncoding,
}

impl Parts {
    fn finish(self) -> Tokenizer {
        let added = self.inner.get_added_tokens_decoder();
        let size = self.inner.get_vocab_size(true);
        let size = added
            .keys()
            .map(|&id| id as usize + 1)
            .fold(size, usize::max);
        let mut special = vec![false; size];
        for (&id, token) in &added {
            special[id as usize] = token.special;
        }
        let model_tokens: Vec<Option<String>> = (0..size as u32)
            .map(|id| self.inner.id_to_token(id))
            .collect();
        let pieces = TokenPieces::build(
            model_tokens.iter().enumerate().map(|(id, token)| {
                let added = added.get(&(id as u32));
                match added {
                    Some(t) => Some((t.content.as_str(), true)),
                    None => token.as_deref().map(|t| (t, false)),
                }
            }),
            self.encoding,
        );
        let mut eos_ids = Vec::new();
        for id in self.eos.iter().map(|t| t.id).chain(self.extra_eos_ids) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        Tokenizer {
            inner: self.inner,
            literal: OnceLock::new(),
            origin: self.origin,
            bos: self.bos,
            eos: self.eos,
            eos_ids,
            chat_template: self.chat_template,
            pieces,
            encoding: self.encoding,
            special,
        }
    }
}

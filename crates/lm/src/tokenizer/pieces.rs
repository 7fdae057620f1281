//! The bytes each token id stands for, computed once at load time.
//!
//! Streaming decodes one token at a time; asking the `tokenizers` decoder
//! for every token would allocate strings and, for byte-level vocabularies,
//! cannot return half a UTF-8 character. A flat table of bytes per id lets
//! the stream append raw bytes and emit only complete characters.

/// How a vocabulary's token strings map back to bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceEncoding {
    /// GPT-2 byte-level BPE: every char stands for one byte.
    ByteLevel,
    /// SentencePiece style: `▁` is a space and `<0xNN>` is a raw byte.
    Metaspace,
    /// The token string is the text.
    Plain,
}

/// Bytes per token id, stored flat.
#[derive(Debug, Clone, Default)]
pub struct TokenPieces {
    bytes: Vec<u8>,
    offsets: Vec<usize>,
}

impl TokenPieces {
    /// Builds the table from `tokens[id] = (token string, is added token)`;
    /// added tokens (special or not) are their text as is.
    pub fn build<'a>(
        tokens: impl ExactSizeIterator<Item = Option<(&'a str, bool)>>,
        encoding: PieceEncoding,
    ) -> Self {
        let inverse = byte_level_inverse();
        let mut pieces = TokenPieces {
            bytes: Vec::new(),
            offsets: Vec::with_capacity(tokens.len() + 1),
        };
        pieces.offsets.push(0);
        for token in tokens {
            if let Some((text, added)) = token {
                if added {
                    pieces.bytes.extend_from_slice(text.as_bytes());
                } else {
                    match encoding {
                        PieceEncoding::ByteLevel => {
                            push_byte_level(&mut pieces.bytes, text, &inverse)
                        }
                        PieceEncoding::Metaspace => push_metaspace(&mut pieces.bytes, text),
                        PieceEncoding::Plain => pieces.bytes.extend_from_slice(text.as_bytes()),
                    }
                }
            }
            pieces.offsets.push(pieces.bytes.len());
        }
        pieces
    }

    /// The bytes of token `id`; empty for ids past the vocabulary (models
    /// often pad their embedding beyond the tokenizer's size).
    pub fn get(&self, id: u32) -> &[u8] {
        let i = id as usize;
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&start), Some(&end)) => &self.bytes[start..end],
            _ => &[],
        }
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// GPT-2's `bytes_to_unicode`, inverted: printable bytes stand for
/// themselves, the rest were moved to U+0100 onwards in byte order.
fn byte_level_inverse() -> [Option<u8>; 324] {
    let mut inverse = [None; 324];
    let mut shifted = 0usize;
    for byte in 0..=255u8 {
        let printable = matches!(byte, 33..=126 | 161..=172 | 174..=255);
        let ch = if printable {
            byte as usize
        } else {
            shifted += 1;
            255 + shifted
        };
        inverse[ch] = Some(byte);
    }
    inverse
}

fn push_byte_level(out: &mut Vec<u8>, text: &str, inverse: &[Option<u8>; 324]) {
    for ch in text.chars() {
        match inverse.get(ch as usize).copied().flatten() {
            Some(byte) => out.push(byte),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

fn push_metaspace(out: &mut Vec<u8>, text: &str) {
    if let Some(byte) = parse_byte_token(text) {
        out.push(byte);
        return;
    }
    for ch in text.chars() {
        let ch = if ch == '\u{2581}' { ' ' } else { ch };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
}

/// `<0xNN>`, SentencePiece's byte-fallback tokens.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(tokens: &[(&str, bool)], encoding: PieceEncoding) -> TokenPieces {
        TokenPieces::build(tokens.iter().map(|&(t, a)| Some((t, a))), encoding)
    }

    #[test]
    fn byte_level_chars_map_back_to_bytes() {
        // "Ġ" is the space byte, "Ċ" the newline; "Ã©" is UTF-8 for "é".
        let pieces = table(
            &[("Ġhello", false), ("Ċ", false), ("Ã©", false)],
            PieceEncoding::ByteLevel,
        );
        assert_eq!(pieces.get(0), b" hello");
        assert_eq!(pieces.get(1), b"\n");
        assert_eq!(pieces.get(2), "é".as_bytes());
    }

    #[test]
    fn added_tokens_are_their_text() {
        let pieces = table(&[("<|im_end|>", true)], PieceEncoding::ByteLevel);
        assert_eq!(pieces.get(0), b"<|im_end|>");
    }

    #[test]
    fn metaspace_handles_spaces_and_byte_fallback() {
        let pieces = table(
            &[("\u{2581}the", false), ("<0x0A>", false)],
            PieceEncoding::Metaspace,
        );
        assert_eq!(pieces.get(0), b" the");
        assert_eq!(pieces.get(1), b"\n");
    }

    #[test]
    fn ids_past_the_table_are_empty() {
        let pieces = table(&[("a", false)], PieceEncoding::Plain);
        assert_eq!(pieces.get(7), b"");
    }
}

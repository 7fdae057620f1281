//! Turning a stream of token bytes into text that is safe to show.
//!
//! Two things make naive streaming wrong. A token can end in the middle of
//! a UTF-8 character (byte-level BPE splits emoji and CJK across tokens),
//! so only complete characters are emitted. And a stop string can be split
//! across tokens, so any tail of the text that could still become a stop
//! string is held back until the next token decides it.

/// Incremental detokenizer with stop strings. Push token bytes in, get the
/// text that may be shown now.
#[derive(Debug, Default)]
pub struct TextStream {
    stops: Vec<String>,
    /// Bytes of an incomplete UTF-8 character at the end.
    partial: Vec<u8>,
    /// Complete text not yet emitted (a possible stop-string prefix).
    held: String,
    /// What the last call emits (reused).
    out: String,
    stopped: bool,
    trim_leading_space: bool,
    started: bool,
}

/// What one push produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Emitted<'a> {
    /// Text to show now (may be empty).
    pub text: &'a str,
    /// Set when a stop string completed: the index into the stop list.
    /// `text` ends just before the stop string; nothing more will come.
    pub stop: Option<usize>,
}

impl TextStream {
    /// A stream that ends at the first of `stops` (empty strings ignored).
    pub fn new(stops: &[String]) -> Self {
        TextStream {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Default::default()
        }
    }

    /// Drops one space at the very start of the text: SentencePiece
    /// vocabularies mark word starts with a space, which the first word of
    /// a reply should not show.
    pub fn set_trim_leading_space(&mut self, trim: bool) {
        self.trim_leading_space = trim;
    }

    /// Forgets all state but the stop strings and the trim setting.
    pub fn reset(&mut self) {
        self.partial.clear();
        self.held.clear();
        self.out.clear();
        self.stopped = false;
        self.started = false;
    }

    /// Whether a stop string has been seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Appends one token's bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Emitted<'_> {
        self.out.clear();
        if self.stopped {
            return Emitted {
                text: &self.out,
                stop: None,
            };
        }
        self.partial.extend_from_slice(bytes);
        self.take_complete_chars();
        if !self.started && !self.held.is_empty() {
            self.started = true;
            if self.trim_leading_space && self.held.starts_with(' ') {
                self.held.remove(0);
            }
        }
        let stop = self.emit(false);
        Emitted {
            text: &self.out,
            stop,
        }
    }

    /// Ends the stream: emits what was held back, with an incomplete
    /// trailing character shown as U+FFFD.
    pub fn finish(&mut self) -> Emitted<'_> {
        self.out.clear();
        if self.stopped {
            return Emitted {
                text: &self.out,
                stop: None,
            };
        }
        if !self.partial.is_empty() {
            self.held.push_str(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
        let stop = self.emit(true);
        Emitted {
            text: &self.out,
            stop,
        }
    }

    /// Moves every complete character from `partial` to `held`; invalid
    /// bytes become U+FFFD, an incomplete tail stays.
    fn take_complete_chars(&mut self) {
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.partial[start..]) {
                Ok(text) => {
                    self.held.push_str(text);
                    start = self.partial.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    // Cannot fail: from_utf8 just validated these bytes.
                    self.held.push_str(
                        std::str::from_utf8(&self.partial[start..valid]).unwrap_or_default(),
                    );
                    match e.error_len() {
                        Some(bad) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            start = valid + bad;
                        }
                        None => {
                            start = valid;
                            break;
                        }
                    }
                }
            }
        }
        self.partial.drain(..start);
    }

    /// Moves text from `held` to `out`: up to a stop string if one is
    /// complete, else all but a tail that could start one (all of it when
    /// `flush`).
    fn emit(&mut self, flush: bool) -> Option<usize> {
        let first_stop = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at, i)))
            .min();
        if let Some((at, index)) = first_stop {
            self.out.push_str(&self.held[..at]);
            self.held.clear();
            self.partial.clear();
            self.stopped = true;
            return Some(index);
        }
        let keep = if flush { 0 } else { self.stop_prefix_len() };
        let cut = self.held.len() - keep;
        self.out.push_str(&self.held[..cut]);
        self.held.drain(..cut);
        None
    }

    /// The length of the longest tail of `held` that is a proper prefix of
    /// some stop string.
    fn stop_prefix_len(&self) -> usize {
        let mut longest = 0;
        for stop in &self.stops {
            let max = (stop.len() - 1).min(self.held.len());
            for len in (longest + 1..=max).rev() {
                let start = self.held.len() - len;
                if self.held.is_char_boundary(start)
                    && stop.as_bytes().starts_with(&self.held.as_bytes()[start..])
                {
                    longest = len;
                    break;
                }
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_passes_through() {
        let mut s = TextStream::new(&[]);
        assert_eq!(s.push(b"Hello").text, "Hello");
        assert_eq!(s.push(b" world").text, " world");
        assert_eq!(s.finish().text, "");
    }

    #[test]
    fn leading_space_is_trimmed_once_when_asked() {
        let mut s = TextStream::new(&[]);
        s.set_trim_leading_space(true);
        assert_eq!(s.push(b"").text, "");
        assert_eq!(s.push(b" Hello").text, "Hello");
        assert_eq!(s.push(b" world").text, " world");
        s.reset();
        assert_eq!(s.push(b" again").text, "again");
    }

    #[test]
    fn invalid_bytes_become_replacement_chars() {
        let mut s = TextStream::new(&[]);
        assert_eq!(s.push(b"a\xffb").text, "a\u{fffd}b");
    }

    #[test]
    fn incomplete_char_at_the_end_is_flushed_lossily() {
        let mut s = TextStream::new(&[]);
        assert_eq!(s.push(&"é".as_bytes()[..1]).text, "");
        assert_eq!(s.finish().text, "\u{fffd}");
    }
}

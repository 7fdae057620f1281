//! Rank output, one whole prefixed line at a time.
//!
//! Lines from different ranks must never mix mid-line, so a rank's bytes are
//! held until a newline arrives and only complete lines are handed on.

/// A line longer than this is cut, so one rank cannot make the launcher
/// buffer without bound.
const MAX_LINE: usize = 64 * 1024;

pub(crate) struct LinePrefixer {
    prefix: Vec<u8>,
    partial: Vec<u8>,
}

impl LinePrefixer {
    pub(crate) fn new(prefix: String) -> Self {
        LinePrefixer {
            prefix: prefix.into_bytes(),
            partial: Vec::new(),
        }
    }

    /// Appends every line that `data` completes to `out`, each prefixed.
    pub(crate) fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&data[..=nl]);
            self.emit(out);
            data = &data[nl + 1..];
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            self.partial.push(b'\n');
            self.emit(out);
            self.partial = rest;
        }
    }

    /// Ends the stream: a last line without a newline still gets out, with one.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.partial.is_empty() {
            self.partial.push(b'\n');
            self.emit(out);
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        out.append(&mut self.partial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> Vec<u8> {
        let mut p = LinePrefixer::new("[1] ".into());
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out);
        }
        p.finish(&mut out);
        out
    }

    #[test]
    fn lines_split_across_reads_come_out_whole() {
        assert_eq!(
            run(&[b"he", b"llo\nwor", b"ld\n"]),
            b"[1] hello\n[1] world\n"
        );
    }

    #[test]
    fn nothing_is_emitted_before_the_newline() {
        let mut p = LinePrefixer::new("[0] ".into());
        let mut out = Vec::new();
        p.push(b"half a line", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn partial_last_line_is_flushed_with_a_newline() {
        assert_eq!(run(&[b"a\nb"]), b"[1] a\n[1] b\n");
    }

    #[test]
    fn empty_lines_keep_their_prefix() {
        assert_eq!(run(&[b"\n\n"]), b"[1] \n[1] \n");
    }

    #[test]
    fn overlong_lines_are_cut_into_prefixed_pieces() {
        let long = vec![b'x'; MAX_LINE + 10];
        let out = run(&[&long]);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.starts_with("[1] ")));
        assert_eq!(lines[1], format!("[1] {}", "x".repeat(10)));
    }
}

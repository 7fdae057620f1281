//! POSIX shell quoting, for the one command line ssh hands to the remote
//! login shell: every argument must arrive exactly as typed.

/// `arg` as one single-quoted shell word. Inside single quotes nothing is
/// special except `'` itself, written as `'\''`.
pub fn quote(arg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(arg.len() + 2);
    out.push(b'\'');
    for &b in arg {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// Words joined by spaces, each quoted.
pub fn quote_words<'a>(words: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for word in words {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(&quote(word));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::process::Command;

    #[test]
    fn quotes_survive_a_real_shell() {
        let odd: [&[u8]; 9] = [
            b"plain",
            b"two words",
            b"it's",
            b"\"dq\"",
            b"$HOME `id`",
            b"; rm -rf /",
            b"line1\nline2",
            b"",
            b"\\back\xff",
        ];
        let script = [b"printf '%s\\0' ".to_vec(), quote_words(odd)].concat();
        let out = Command::new("sh")
            .arg("-c")
            .arg(std::ffi::OsStr::from_bytes(&script))
            .output()
            .unwrap();
        let got: Vec<&[u8]> = out.stdout.split(|&b| b == 0).collect();
        let want: Vec<&[u8]> = odd.iter().copied().chain([&b""[..]]).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn empty_argument_stays_a_word() {
        assert_eq!(quote(b""), b"''");
        assert_eq!(quote_words([&b"a"[..], b""]), b"'a' ''");
    }
}

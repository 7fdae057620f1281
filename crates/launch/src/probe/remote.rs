//! Commands on a host through the system's ssh, as `huddle launch` runs
//! them: BatchMode (never a password prompt), no tty, the user's config.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::quote::quote_words;

/// ssh exits 255 when it, rather than the remote command, failed.
const SSH_FAILED: i32 = 255;

#[derive(Debug, Clone, Default)]
pub struct Remote {
    /// `ssh -F`.
    pub ssh_config: Option<PathBuf>,
}

impl Remote {
    /// `ssh ... host 'word' 'word' ...`: the words arrive as given.
    pub fn command(&self, host: &str, words: &[&[u8]]) -> Command {
        let mut command = Command::new("ssh");
        if let Some(config) = &self.ssh_config {
            command.arg("-F").arg(config);
        }
        command.args(["-T", "-x", "-e", "none", "-o", "BatchMode=yes"]);
        // A host that dies mid-survey ends its session instead of hanging it.
        command.args(["-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5"]);
        command.args(["-o", "ServerAliveCountMax=3", "--", host]);
        command.arg(OsString::from_vec(quote_words(words.iter().copied())));
        command
    }

    /// Runs `sh -c script` on `host` and returns its stdout. An ssh
    /// failure is [`Err`] with ssh's last line of stderr.
    pub fn run_script(&self, host: &str, script: &str) -> Result<String, String> {
        let output = self
            .command(host, &[b"sh", b"-c", script.as_bytes()])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run ssh: {e}"))?;
        check(output)
    }
}

fn check(output: Output) -> Result<String, String> {
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned();
    Err(match output.status.code() {
        Some(SSH_FAILED) if !last.is_empty() => last,
        Some(SSH_FAILED) => "ssh failed (exit 255)".to_owned(),
        Some(code) if !last.is_empty() => format!("exit status {code}: {last}"),
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_runs_in_batch_mode_with_the_config() {
        let remote = Remote {
            ssh_config: Some("/x/cfg".into()),
        };
        let cmd = remote.command("h1", &[b"echo", b"it's"]);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[..3], ["-F", "/x/cfg", "-T"]);
        assert!(args.contains(&"BatchMode=yes".to_owned()));
        assert_eq!(args[args.len() - 2..], ["h1", "'echo' 'it'\\''s'"]);
    }

    #[test]
    fn failure_reports_the_last_stderr_line() {
        let out = Command::new("sh")
            .args([
                "-c",
                "echo noise >&2; echo 'Connection refused' >&2; exit 255",
            ])
            .output()
            .unwrap();
        assert_eq!(check(out).unwrap_err(), "Connection refused");
        let out = Command::new("sh").args(["-c", "exit 3"]).output().unwrap();
        assert_eq!(check(out).unwrap_err(), "exit status 3");
    }
}

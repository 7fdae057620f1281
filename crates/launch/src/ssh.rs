//! `huddle launch --hostfile H`: each rank through the system's OpenSSH
//! client, so the user's keys, agent and ssh_config just work, against a
//! stock sshd (no AcceptEnv, no PermitUserEnvironment).
//!
//! The remote command is a fixed bootstrap (bootstrap.sh) plus the quoted
//! program and arguments; everything secret or per-rank (environment, job
//! token, working directory) goes through the session's stdin, so it never
//! shows in a process listing. The bootstrap keeps reading that stdin for
//! the rest of the job: stdin data, signals, and EOF when the launcher or
//! the connection dies, which stops everything the session started.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::LaunchError;
use crate::env::{EnvPair, JobEnv, JobToken, Placement};
use crate::hostfile::{Hostfile, is_ip};
use crate::quote::{quote, quote_words};
use crate::report::JobReport;
use crate::spawn::RankProcess;
use crate::stdin::StdinPlan;
use crate::supervise::{SuperviseOptions, supervise};

const BOOTSTRAP: &str = include_str!("bootstrap.sh");

/// Coordinator ports are drawn from here when none is given: the launcher
/// cannot check what is free on a remote host, so it avoids the common
/// fixed ports and lets two jobs rarely collide.
const PORT_RANGE: std::ops::Range<u16> = 20_000..60_000;

#[derive(Debug, Clone)]
pub struct SshJob {
    pub hostfile: Hostfile,
    pub ranks_per_host: usize,
    pub command: Vec<OsString>,
    /// After the hostfile's `envs`, so these win.
    pub env: Vec<EnvPair>,
    /// Remote working directory; the remote login directory when `None`.
    pub cwd: Option<PathBuf>,
    pub port: Option<u16>,
    /// Passed to ssh as `-F FILE`.
    pub ssh_config: Option<PathBuf>,
    pub options: SuperviseOptions,
}

/// One rank's ssh invocation, before it is started.
#[derive(Debug, Clone)]
pub struct SshRank {
    pub rank: usize,
    pub host: String,
    /// ssh and its arguments.
    pub argv: Vec<OsString>,
    /// The shell that the bootstrap evaluates first (environment, cd).
    pub setup: String,
    pub forward_stdin: bool,
}

impl SshJob {
    /// Every rank's ssh command, for a fresh token and coordinator port.
    pub fn plan(&self) -> Result<Vec<SshRank>, LaunchError> {
        self.plan_with(&JobToken::generate())
    }

    fn plan_with(&self, token: &JobToken) -> Result<Vec<SshRank>, LaunchError> {
        if self.command.is_empty() {
            return Err(LaunchError::EmptyCommand);
        }
        let first = self.hostfile.hosts.first().ok_or(LaunchError::NoHosts)?;
        if self.ranks_per_host == 0 {
            return Err(LaunchError::NoRanks);
        }
        let port = self.port.unwrap_or_else(|| rand::random_range(PORT_RANGE));
        let mut extra = self.hostfile.envs.clone();
        extra.extend(self.env.iter().cloned());
        let job_env = JobEnv {
            world_size: self.hostfile.hosts.len() * self.ranks_per_host,
            coordinator: coordinator(first_address(first), port),
            token: token.clone(),
            hostfile: None,
            extra,
        };
        let mut ranks = Vec::new();
        for (h, host) in self.hostfile.hosts.iter().enumerate() {
            for local_rank in 0..self.ranks_per_host {
                let rank = h * self.ranks_per_host + local_rank;
                let place = Placement {
                    rank,
                    local_rank,
                    local_size: self.ranks_per_host,
                };
                let vars = job_env.for_rank_on(place, &host.ips);
                ranks.push(SshRank {
                    rank,
                    host: host.ssh.clone(),
                    argv: self.ssh_argv(&host.ssh),
                    setup: setup_script(&vars, self.cwd.as_deref(), self.options.grace.as_secs()),
                    forward_stdin: rank == 0,
                });
            }
        }
        Ok(ranks)
    }

    fn ssh_argv(&self, host: &str) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec!["ssh".into()];
        if let Some(config) = &self.ssh_config {
            argv.push("-F".into());
            argv.push(config.clone().into());
        }
        // No tty (it would merge stderr into stdout and eat binary stdin),
        // no escape character, no X11, never a password prompt.
        for opt in ["-T", "-x", "-e", "none", "-o", "BatchMode=yes", "--"] {
            argv.push(opt.into());
        }
        argv.push(host.into());
        argv.push(OsString::from_vec(self.remote_command()));
        argv
    }

    /// What the remote login shell parses:
    /// `exec sh -c '<bootstrap>' huddle-rank ARGS`. The `exec` leaves the
    /// bootstrap alone in the session's process group, so signalling that
    /// group never hits a login shell waiting in between.
    fn remote_command(&self) -> Vec<u8> {
        let bootstrap: String = BOOTSTRAP
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut words: Vec<&[u8]> = vec![b"sh", b"-c", bootstrap.as_bytes(), b"huddle-rank"];
        words.extend(self.command.iter().map(|a| a.as_bytes()));
        [&b"exec "[..], &quote_words(words)].concat()
    }

    /// Runs the job to its end.
    pub fn run(&self) -> Result<JobReport, LaunchError> {
        let processes = self
            .plan()?
            .into_iter()
            .map(SshRank::into_process)
            .collect();
        supervise(processes, &self.options)
    }
}

impl SshRank {
    fn into_process(self) -> RankProcess {
        let mut command = Command::new(&self.argv[0]);
        command.args(&self.argv[1..]);
        let mut preamble = format!("{}\n", self.setup.len()).into_bytes();
        preamble.extend_from_slice(self.setup.as_bytes());
        if !self.forward_stdin {
            preamble.extend_from_slice(&crate::stdin::frame::eof());
        }
        RankProcess {
            rank: self.rank,
            host: Some(self.host),
            command,
            stdin: StdinPlan::Framed {
                preamble,
                forward: self.forward_stdin,
            },
        }
    }

    /// The command line as a shell would take it, for `--dry-run`.
    pub fn display_command(&self) -> String {
        String::from_utf8_lossy(&quote_words(self.argv.iter().map(|a| a.as_bytes()))).into_owned()
    }
}

/// The shell the bootstrap evaluates: exports, the stop grace period, cd.
fn setup_script(vars: &[(String, OsString)], cwd: Option<&Path>, grace_secs: u64) -> String {
    let mut script = Vec::new();
    for (key, value) in vars {
        script.extend_from_slice(format!("export {key}=").as_bytes());
        script.extend_from_slice(&quote(value.as_bytes()));
        script.push(b'\n');
    }
    script.extend_from_slice(format!("huddle_grace={}\n", grace_secs.max(1)).as_bytes());
    if let Some(dir) = cwd {
        script.extend_from_slice(b"cd ");
        script.extend_from_slice(&quote(dir.as_os_str().as_bytes()));
        script.extend_from_slice(b" || exit 97\n");
    }
    String::from_utf8_lossy(&script).into_owned()
}

/// Where rank 0 is reached: its first listed address, else its ssh name
/// without any `user@`.
fn first_address(host: &crate::Host) -> &str {
    match host.ips.first() {
        Some(ip) => ip,
        None => host.ssh.rsplit_once('@').map_or(&host.ssh, |(_, h)| h),
    }
}

fn coordinator(host: &str, port: u16) -> String {
    if host.contains(':') && is_ip(host) {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `--dry-run`: each rank's command and setup, with the token hidden.
pub fn describe(ranks: &[SshRank], token_hidden_as: &str) -> String {
    let mut out = String::new();
    for rank in ranks {
        out.push_str(&format!(
            "# rank {} on {}\n{}\n",
            rank.rank,
            rank.host,
            rank.display_command()
        ));
        for line in rank.setup.lines() {
            let line = match line.split_once('=') {
                Some((k, _)) if k == format!("export {}", crate::env::JOB_TOKEN) => {
                    format!("{k}={token_hidden_as}")
                }
                _ => line.to_owned(),
            };
            out.push_str(&format!("#   {line}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(hosts: &str) -> SshJob {
        SshJob {
            hostfile: Hostfile::from_host_list(hosts).unwrap(),
            ranks_per_host: 2,
            command: vec!["echo".into(), "it's".into()],
            env: vec![EnvPair::parse("A=1".as_ref()).unwrap()],
            cwd: Some("/work dir".into()),
            port: Some(4000),
            ssh_config: None,
            options: SuperviseOptions::default(),
        }
    }

    #[test]
    fn ranks_are_placed_host_by_host() {
        let ranks = job("10.0.0.1,m2").plan().unwrap();
        let placed: Vec<(usize, &str)> = ranks.iter().map(|r| (r.rank, r.host.as_str())).collect();
        assert_eq!(
            placed,
            [(0, "10.0.0.1"), (1, "10.0.0.1"), (2, "m2"), (3, "m2")]
        );
        assert!(ranks[3].setup.contains("export HUDDLE_LOCAL_RANK='1'\n"));
        assert!(ranks[3].setup.contains("export HUDDLE_WORLD_SIZE='4'\n"));
        assert!(
            ranks[3]
                .setup
                .contains("export HUDDLE_COORDINATOR='10.0.0.1:4000'\n")
        );
        assert!(ranks[0].setup.contains("cd '/work dir' || exit 97\n"));
        assert!(ranks[0].forward_stdin && !ranks[1].forward_stdin);
    }

    #[test]
    fn token_is_in_the_setup_never_in_argv() {
        let token = JobToken::generate();
        let ranks = job("a,b").plan_with(&token).unwrap();
        for rank in &ranks {
            assert!(rank.setup.contains(token.reveal()));
            assert!(!rank.display_command().contains(token.reveal()));
        }
        let shown = describe(&ranks, "<hidden>");
        assert!(!shown.contains(token.reveal()));
        assert!(shown.contains("HUDDLE_JOB_TOKEN=<hidden>"));
    }

    #[test]
    fn coordinator_is_host_zero_first_ip_or_name() {
        assert_eq!(coordinator("fe80::1", 5), "[fe80::1]:5");
        let mut j = job("alice@m1,m2");
        let ranks = j.plan().unwrap();
        assert!(ranks[0].setup.contains("HUDDLE_COORDINATOR='m1:4000'"));
        j.hostfile.hosts[0].ips = vec!["192.168.1.9".into()];
        let ranks = j.plan().unwrap();
        assert!(
            ranks[0]
                .setup
                .contains("HUDDLE_COORDINATOR='192.168.1.9:4000'")
        );
    }

    #[test]
    fn each_rank_advertises_its_own_hosts_ips() {
        let mut j = job("m1,m2");
        j.hostfile.hosts[0].ips = vec!["10.0.0.1".into(), "192.168.1.1".into()];
        j.hostfile.hosts[1].ips = vec!["10.0.0.2".into(), "fd00::2".into()];
        let ranks = j.plan().unwrap();
        for r in &ranks[..2] {
            assert!(
                r.setup
                    .contains("export HUDDLE_ADDRS='10.0.0.1,192.168.1.1'\n"),
                "{}",
                r.setup
            );
        }
        for r in &ranks[2..] {
            assert!(
                r.setup.contains("export HUDDLE_ADDRS='10.0.0.2,fd00::2'\n"),
                "{}",
                r.setup
            );
        }
        let ranks = job("m1,m2").plan().unwrap();
        assert!(ranks.iter().all(|r| !r.setup.contains("HUDDLE_ADDRS")));
    }

    #[test]
    fn ssh_runs_in_batch_mode_without_a_tty() {
        let ranks = job("h").plan().unwrap();
        let cmd = ranks[0].display_command();
        assert!(cmd.starts_with("'ssh' '-T' '-x' '-e' 'none' '-o' 'BatchMode=yes' '--' 'h' "));
        assert!(cmd.contains(" 'exec '\\''sh'\\'' '\\''-c'\\'' "));
        assert!(cmd.ends_with("'huddle-rank'\\'' '\\''echo'\\'' '\\''it'\\''\\'\\'''\\''s'\\'''"));
    }

    #[test]
    fn bootstrap_runs_the_program_with_env_and_framed_stdin() {
        // The bootstrap, run by a local sh exactly as sshd's shell would.
        let mut j = job("h");
        j.command = ["sh", "-c", "echo rank=$HUDDLE_RANK pwd=$(pwd); cat"]
            .map(OsString::from)
            .to_vec();
        let rank = j.plan().unwrap().remove(0);
        let dir = std::env::temp_dir();
        let setup = format!(
            "export HUDDLE_RANK='0'\nhuddle_grace=1\ncd '{}'\n",
            dir.display()
        );
        let mut input = format!("{}\n{}", setup.len(), setup).into_bytes();
        input.extend(crate::stdin::frame::data(b"hello\n"));
        input.extend(crate::stdin::frame::data(b"wor"));
        input.extend(crate::stdin::frame::data(b"ld\n"));
        input.extend(crate::stdin::frame::eof());
        let script = String::from_utf8(j.remote_command()).unwrap();
        use std::io::Write;
        use std::os::unix::process::CommandExt;
        // Its own process group, as sshd gives each session: the bootstrap
        // signals "its whole group" when it stops.
        let mut child = Command::new("sh")
            .process_group(0)
            .arg("-c")
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.as_mut().unwrap().write_all(&input).unwrap();
        // Closing stdin now would stop the job (it means "launcher gone"),
        // so keep it open until the program is done.
        let stdin = child.stdin.take();
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            text,
            format!("rank=0 pwd={}\nhello\nworld\n", dir.display())
        );
        assert!(out.status.success());
        assert!(rank.forward_stdin);
    }

    /// Runs the bootstrap around `program` in its own process group, feeds
    /// `input` once the program runs (a signal frame that came earlier
    /// could land between the bootstrap's fork and exec, where its own trap
    /// catches it), then closes stdin if `close` (else only after it exits).
    fn bootstrap_status(program: &str, input: &[u8], close: bool) -> Option<i32> {
        use std::io::Write;
        use std::os::unix::process::CommandExt;
        static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let ready = std::env::temp_dir().join(format!(
            "huddle-bootstrap-ready-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&ready);
        let mut j = job("h");
        let program = format!("touch '{}'; {program}", ready.display());
        j.command = vec!["sh".into(), "-c".into(), program.into()];
        let setup = "huddle_grace=1\n";
        let mut command = Command::new("sh");
        command
            .process_group(0)
            .arg("-c")
            .arg(std::ffi::OsStr::from_bytes(&j.remote_command()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        // As under sshd: SIGINT at its default, even when this test runs as
        // a shell's background job (which ignores it, and a shell cannot
        // trap a signal ignored on entry).
        // SAFETY: signal() is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{}\n{}", setup.len(), setup).as_bytes())
            .unwrap();
        let start = std::time::Instant::now();
        while !ready.exists() {
            assert!(start.elapsed().as_secs() < 120, "program never started");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&ready);
        // A program that already ended may have taken the bootstrap along.
        let _ = stdin.write_all(input);
        let held = if close {
            drop(stdin);
            None
        } else {
            Some(stdin)
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait().map(|s| s.code())));
        let status = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("bootstrap hung")
            .unwrap();
        drop(held);
        status
    }

    #[test]
    fn bootstrap_stops_the_program_when_stdin_closes() {
        // EOF is what a dropped ssh connection looks like from the far end.
        assert_eq!(
            bootstrap_status("exec sleep 1000", b"", true),
            Some(128 + 15)
        );
    }

    #[test]
    fn bootstrap_outlives_a_closed_stderr_to_stop_the_job() {
        // A dropped connection closes the bootstrap's stderr too: the
        // shell's "Terminated" report then raises SIGPIPE, which must not
        // end the bootstrap before it has stopped everything and exited
        // with the program's status.
        use std::io::Write;
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        let ready = std::env::temp_dir().join(format!("huddle-bootstrap-{}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let mut j = job("h");
        // Only a program that is running gets the shell's report.
        let program = format!("touch '{}'; exec sleep 1000", ready.display());
        j.command = vec!["sh".into(), "-c".into(), program.into()];
        let setup = "huddle_grace=1\n";
        let mut child = Command::new("sh")
            .process_group(0)
            .arg("-c")
            .arg(std::ffi::OsStr::from_bytes(&j.remote_command()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{}\n{}", setup.len(), setup).as_bytes())
            .unwrap();
        drop(child.stderr.take());
        let start = std::time::Instant::now();
        while !ready.exists() {
            assert!(start.elapsed().as_secs() < 120, "program never started");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&ready);
        drop(stdin);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait()));
        let status = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("bootstrap hung")
            .unwrap();
        assert_eq!(
            (status.code(), status.signal()),
            (Some(128 + 15), None),
            "{status}"
        );
    }

    #[test]
    fn bootstrap_delivers_signal_frames() {
        let frame = crate::stdin::frame::signal("INT");
        assert_eq!(
            bootstrap_status("exec sleep 1000", &frame, false),
            Some(128 + 2)
        );
    }

    #[test]
    fn bootstrap_passes_the_exit_status_through() {
        assert_eq!(bootstrap_status("exit 7", b"E\n", false), Some(7));
    }
}

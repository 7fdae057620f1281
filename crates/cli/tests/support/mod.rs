//! Helpers shared by the CLI tests: run `huddle` with a hang guard, look at
//! processes by pid, find the SmolLM2 file, make test hosts (testbed.rs).

#![allow(dead_code)]

pub mod testbed;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Only a guard against a hung launcher; never a speed requirement.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn huddle() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_huddle"));
    cmd.env_remove("HUDDLE_LOG");
    cmd
}

/// Runs `huddle <args>` with `stdin` fed and closed, to its end.
pub fn run(args: &[&str], stdin: &[u8]) -> Outcome {
    let child = huddle()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start huddle");
    finish(child, stdin)
}

/// Feeds `stdin`, collects the output and waits, killing the launcher if
/// it is still running after [`HANG_GUARD`].
pub fn finish(mut child: Child, stdin: &[u8]) -> Outcome {
    let mut input = child.stdin.take();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(pipe) = input.as_mut() {
            let _ = pipe.write_all(&data);
        }
    });
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_guarded(child);
    writer.join().expect("stdin writer");
    Outcome {
        code: status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

pub fn wait_guarded(mut child: Child) -> Option<i32> {
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(HANG_GUARD) {
        Ok(status) => status.expect("wait for huddle").code(),
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("huddle launch did not finish within {HANG_GUARD:?}");
        }
    }
}

/// A fresh empty directory for one test, removed when dropped.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("huddle-launch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    Scratch(dir)
}

/// Waits (hang-guarded) until `path` holds a pid and its newline, and
/// returns it. Scripts write it with the shell's own `echo` (one write) and
/// then `exec` at once: an external `mv` in between leaves a window where a
/// signal meant for the rank finds the shell waiting on `mv`, which a shell
/// may survive (bash waits for the child, then goes on to the `exec`).
pub fn wait_for_pid(path: &Path) -> libc::pid_t {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(start.elapsed() < HANG_GUARD, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Alive means it exists and is not a zombie waiting for a parent's wait.
pub fn alive(pid: libc::pid_t) -> bool {
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits (hang-guarded) until `pid` is gone.
pub fn wait_gone(pid: libc::pid_t) {
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < HANG_GUARD, "process {pid} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The project's copy of the network-namespace testbed.
pub const CLUSTER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/testbed/cluster.sh"
);

/// A multi-host test that cannot run here: skipped with the reason on a
/// developer's machine, but a failure under CI (root, tools installed by
/// .ci/run), where a skip would hide a broken setup.
pub fn cannot_run(what: &str, reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{what} cannot run under CI: {reason}");
    }
    eprintln!("skipping {what}: {reason}");
}

/// The real SmolLM2 file the model tests use (scripts/fetch-smollm2.sh).
pub fn smollm2() -> PathBuf {
    let path = std::env::var_os("HUDDLE_SMOLLM2")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-smollm2.sh (or set HUDDLE_SMOLLM2)",
        path.display()
    );
    path
}

/// Without a system message SmolLM2's template inserts its own, after which
/// this Q4_1 file greedily answers in French (llama.cpp agrees).
pub const SYSTEM: &str = "You are a helpful assistant.";

/// `huddle launch -n RANKS -- huddle ARGS --model SMOLLM2`, with `stdin`
/// piped to the launcher; returns the output and its text.
pub fn launch_smollm2(ranks: usize, args: &[&str], stdin: &str) -> (Output, String, String) {
    let huddle = env!("CARGO_BIN_EXE_huddle");
    let mut child = Command::new(huddle)
        .args(["launch", "-n", &ranks.to_string(), "--", huddle])
        .args(args)
        .arg("--model")
        .arg(smollm2())
        .env_remove("HUDDLE_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("huddle launch runs");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .expect("stdin accepts input");
    }
    let output = child.wait_with_output().expect("huddle launch finishes");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

/// A multi-rank `generate` asked for France's capital: it succeeded, printed
/// Paris once, only rank 0 printed, and one speed report came out. Returns
/// stderr for further checks.
pub fn generate_paris(ranks: usize, extra: &[&str]) -> String {
    let mut args = vec![
        "generate",
        "--system",
        SYSTEM,
        "--prompt",
        "What is the capital of France?",
        "--max-tokens",
        "20",
    ];
    args.extend_from_slice(extra);
    let (output, stdout, stderr) = launch_smollm2(ranks, &args, "");
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout.matches("Paris").count(), 1, "stdout: {stdout}");
    assert!(
        stdout.lines().all(|l| !l.starts_with("[1]")),
        "rank 1 printed: {stdout}"
    );
    assert_eq!(
        stderr.matches("Generation: ").count(),
        1,
        "stderr: {stderr}"
    );
    stderr
}

/// A 2-rank `chat` asked France's capital twice (a `/reset` between): it
/// succeeded, answered Paris each turn, and only rank 0 printed.
pub fn chat_paris_twice(extra: &[&str]) {
    let mut args = vec!["chat", "--system", SYSTEM, "--max-tokens", "20"];
    args.extend_from_slice(extra);
    let (output, stdout, stderr) = launch_smollm2(
        2,
        &args,
        "What is the capital of France?\n/reset\nWhat is the capital of France?\n",
    );
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout.matches("Paris").count(), 2, "stdout: {stdout}");
    assert!(
        stdout.lines().all(|l| !l.starts_with("[1]")),
        "rank 1 printed: {stdout}"
    );
}

//! Pipeline-parallel generation and chat through the launcher: two local
//! ranks each hold half of SmolLM2's layers; only rank 0 reads stdin and
//! prints, and generate reports every rank's peak memory.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

const SYSTEM: &str = "You are a helpful assistant.";

/// `huddle launch -n N -- huddle ARGS --pipeline --model SMOLLM2`, with
/// `stdin` piped to the launcher.
fn launch_pipeline(ranks: usize, args: &[&str], stdin: &str) -> (Output, String, String) {
    let huddle = env!("CARGO_BIN_EXE_huddle");
    let mut child = Command::new(huddle)
        .args(["launch", "-n", &ranks.to_string(), "--", huddle])
        .args(args)
        .arg("--pipeline")
        .arg("--model")
        .arg(support::smollm2())
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

fn generate_paris(ranks: usize) -> String {
    let (output, stdout, stderr) = launch_pipeline(
        ranks,
        &[
            "generate",
            "--system",
            SYSTEM,
            "--prompt",
            "What is the capital of France?",
            "--max-tokens",
            "20",
        ],
        "",
    );
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

#[test]
fn pipelined_generate_on_two_ranks_prints_paris_once_and_each_ranks_memory() {
    let stderr = generate_paris(2);
    let line = stderr
        .lines()
        .find(|l| l.contains("Peak memory: rank 0 "))
        .unwrap_or_else(|| panic!("no per-rank peak memory line: {stderr}"));
    assert!(
        line.contains(", rank 1 ") && line.ends_with(" GB"),
        "{line}"
    );
}

#[test]
fn pipelined_generate_on_three_ranks_prints_paris_once() {
    let stderr = generate_paris(3);
    assert!(stderr.contains(", rank 2 "), "stderr: {stderr}");
}

#[test]
fn pipelined_chat_on_two_ranks_answers_each_turn_from_rank_0() {
    let (output, stdout, stderr) = launch_pipeline(
        2,
        &["chat", "--system", SYSTEM, "--max-tokens", "20"],
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

//! Tensor-parallel generation and chat through the launcher: two local
//! ranks split SmolLM2; only rank 0 reads stdin and prints.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

const SYSTEM: &str = "You are a helpful assistant.";

/// `huddle launch -n 2 -- huddle ARGS`, with `stdin` piped to the launcher.
fn launch_two(args: &[&str], stdin: &str) -> (Output, String, String) {
    let huddle = env!("CARGO_BIN_EXE_huddle");
    let mut child = Command::new(huddle)
        .args(["launch", "-n", "2", "--", huddle])
        .args(args)
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

#[test]
fn generate_on_two_ranks_prints_paris_once_from_rank_0() {
    let (output, stdout, stderr) = launch_two(
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
}

#[test]
fn chat_on_two_ranks_answers_from_rank_0_and_both_exit_at_end_of_input() {
    let (output, stdout, stderr) = launch_two(
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

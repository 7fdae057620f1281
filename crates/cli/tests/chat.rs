//! `huddle chat` with stdin piped: one message a line, clean stop at EOF.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `huddle -v chat` with `input` on stdin; returns (success, stdout, stderr).
fn chat(input: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_huddle"))
        .args([
            "-v",
            "chat",
            "--max-tokens",
            "30",
            "--system",
            "You are a helpful assistant.",
            "--model",
        ])
        .arg(support::smollm2())
        .env_remove("HUDDLE_LOG")
        .env_remove("HUDDLE_LOCAL_SIZE")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("huddle starts");
    let mut stdin = child.stdin.take().expect("stdin piped");
    stdin.write_all(input.as_bytes()).expect("input written");
    drop(stdin);
    let output = child.wait_with_output().expect("huddle ends");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The `reused=N` values of the per-turn log lines.
fn reused_per_turn(stderr: &str) -> Vec<usize> {
    stderr
        .lines()
        .filter(|l| l.contains("turn done"))
        .filter_map(|l| {
            l.split("reused=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn two_piped_lines_are_two_turns_sharing_the_cache() {
    let (ok, stdout, stderr) = chat("What is the capital of France?\nWhat did I just ask you?\n");
    assert!(ok, "stderr: {stderr}");
    assert!(stdout.contains("Paris"), "stdout: {stdout}");
    let reused = reused_per_turn(&stderr);
    assert_eq!(reused.len(), 2, "stderr: {stderr}");
    assert_eq!(reused[0], 0);
    // The second turn took the first turn's prompt from the KV cache.
    assert!(reused[1] > 20, "reused {reused:?}");
}

#[test]
fn reset_starts_over_and_exit_stops() {
    let (ok, _, stderr) = chat("Hi\n/reset\nHi\n/exit\nThis line is never read\n");
    assert!(ok, "stderr: {stderr}");
    let reused = reused_per_turn(&stderr);
    assert_eq!(reused, vec![0, 0], "stderr: {stderr}");
}

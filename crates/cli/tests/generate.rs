//! `huddle generate` end to end with the real SmolLM2 model.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

/// Without a system message SmolLM2's template inserts its own, after which
/// this Q4_1 file greedily answers in French (llama.cpp agrees).
const SYSTEM: &str = "You are a helpful assistant.";

fn huddle() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_huddle"));
    cmd.env_remove("HUDDLE_LOCAL_SIZE")
        .env_remove("HUDDLE_LOG")
        .env("NO_COLOR", "1");
    cmd
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let output = cmd.output().expect("huddle runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

#[test]
fn generate_answers_the_capital_of_france() {
    let (output, stdout, stderr) = run(huddle()
        .args([
            "generate",
            "--max-tokens",
            "40",
            "--system",
            SYSTEM,
            "--prompt",
        ])
        .arg("What is the capital of France?")
        .arg("--model")
        .arg(support::smollm2()));
    assert!(output.status.success(), "stderr: {stderr}");
    assert!(stdout.contains("Paris"), "stdout: {stdout}");
    assert!(stderr.contains("=========="), "stderr: {stderr}");
    assert!(stderr.contains("Prompt: "), "stderr: {stderr}");
    assert!(stderr.contains("tokens-per-sec"), "stderr: {stderr}");
    assert!(stderr.contains("Generation: "), "stderr: {stderr}");
    assert!(stderr.contains("Peak memory: "), "stderr: {stderr}");
    // Quiet in a pipe: no progress bar.
    assert!(!stderr.contains('\r'), "stderr: {stderr:?}");
}

#[test]
fn stop_string_ends_the_output_before_it() {
    let (output, stdout, stderr) = run(huddle()
        .args([
            "generate",
            "--max-tokens",
            "40",
            "--system",
            SYSTEM,
            "--stop",
            "Paris",
            "--prompt",
        ])
        .arg("What is the capital of France?")
        .arg("--model")
        .arg(support::smollm2()));
    assert!(output.status.success(), "stderr: {stderr}");
    assert!(!stdout.contains("Paris"), "stdout: {stdout}");
    assert!(stderr.contains("Generation: "), "stderr: {stderr}");
}

#[test]
fn a_prompt_longer_than_the_context_is_a_one_line_error() {
    let prompt = "word ".repeat(9000);
    let (output, _, stderr) = run(huddle()
        .args([
            "generate",
            "--ignore-chat-template",
            "--max-tokens",
            "1",
            "--prompt",
            &prompt,
            "--model",
        ])
        .arg(support::smollm2()));
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("huddle: error: "), "stderr: {stderr}");
    assert!(stderr.contains("context"), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr}");
}

#[test]
fn a_missing_model_is_a_one_line_error() {
    let (output, _, stderr) = run(huddle().args([
        "generate",
        "--prompt",
        "hi",
        "--model",
        "/nonexistent/model.gguf",
    ]));
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.starts_with("huddle: error: "), "stderr: {stderr}");
    assert!(
        stderr.contains("/nonexistent/model.gguf"),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr}");
}

#[test]
fn one_allowed_cpu_means_one_thread() {
    use std::os::unix::process::CommandExt;
    let mut cmd = huddle();
    cmd.args([
        "-v",
        "generate",
        "--max-tokens",
        "2",
        "--prompt",
        "Hi",
        "--model",
    ])
    .arg(support::smollm2());
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (output, _, stderr) = run(&mut cmd);
    assert!(output.status.success(), "stderr: {stderr}");
    assert!(stderr.contains("threads=1 "), "stderr: {stderr}");
}

#[test]
fn threads_flag_overrides_the_affinity_mask() {
    let (output, _, stderr) = run(huddle()
        .args([
            "-v",
            "generate",
            "--threads",
            "3",
            "--max-tokens",
            "1",
            "--prompt",
            "Hi",
            "--model",
        ])
        .arg(support::smollm2()));
    assert!(output.status.success(), "stderr: {stderr}");
    assert!(stderr.contains("threads=3 "), "stderr: {stderr}");
}

#[test]
fn out_of_range_sampling_is_a_one_line_error() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lm/tests/fixtures/llama");
    assert!(
        fixture.is_dir(),
        "{} is missing: run scripts/make_fixtures.py",
        fixture.display()
    );
    let (output, _, stderr) = run(huddle()
        .args(["generate", "--prompt", "hi", "--temp", "-1", "--model"])
        .arg(&fixture));
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with("huddle: error: temperature"),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr}");
}

#[test]
fn hugging_face_directory_generates_with_sampling_and_seed() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lm/tests/fixtures/llama3");
    assert!(
        fixture.is_dir(),
        "{} is missing: run scripts/make_fixtures.py",
        fixture.display()
    );
    let args = [
        "generate",
        "--prompt",
        "hi",
        "--max-tokens",
        "12",
        "--temp",
        "0.8",
        "--top-k",
        "50",
        "--top-p",
        "0.9",
        "--min-p",
        "0.05",
        "--repetition-penalty",
        "1.1",
        "--seed",
        "7",
        "--model",
    ];
    let (first, out1, err1) = run(huddle().args(args).arg(&fixture));
    let (second, out2, _) = run(huddle().args(args).arg(&fixture));
    assert!(
        first.status.success() && second.status.success(),
        "stderr: {err1}"
    );
    assert_eq!(out1, out2, "same seed, same text");
    assert!(err1.contains("Generation: "), "stderr: {err1}");
}

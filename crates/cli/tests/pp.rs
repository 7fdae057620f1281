//! Pipeline-parallel generation and chat through the launcher: two local
//! ranks each hold half of SmolLM2's layers; only rank 0 reads stdin and
//! prints, and generate reports every rank's peak memory.

mod support;

use support::{SYSTEM, generate_paris, launch_smollm2};

#[test]
fn pipelined_generate_on_two_ranks_prints_paris_once_and_each_ranks_memory() {
    let stderr = generate_paris(2, &["--pipeline"]);
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
    let stderr = generate_paris(3, &["--pipeline"]);
    assert!(stderr.contains(", rank 2 "), "stderr: {stderr}");
}

#[test]
fn pipelined_chat_on_two_ranks_answers_each_turn_from_rank_0() {
    let (output, stdout, stderr) = launch_smollm2(
        2,
        &[
            "chat",
            "--pipeline",
            "--system",
            SYSTEM,
            "--max-tokens",
            "20",
        ],
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

//! Tensor-parallel generation and chat through the launcher: two local
//! ranks split SmolLM2; only rank 0 reads stdin and prints.

mod support;

use support::{SYSTEM, generate_paris, launch_smollm2};

#[test]
fn generate_on_two_ranks_prints_paris_once_from_rank_0() {
    generate_paris(2, &[]);
}

#[test]
fn chat_on_two_ranks_answers_from_rank_0_and_both_exit_at_end_of_input() {
    let (output, stdout, stderr) = launch_smollm2(
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

//! Pipeline-parallel generation and chat through the launcher: two local
//! ranks each hold half of SmolLM2's layers; only rank 0 reads stdin and
//! prints, and generate reports every rank's peak memory.

mod support;

use support::{SYSTEM, chat_paris_twice, generate_paris, launch_smollm2};

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
    chat_paris_twice(&["--pipeline"]);
}

#[test]
fn two_stages_of_two_tensor_ranks_on_four_ranks_print_paris_once() {
    let stderr = generate_paris(4, &["--pipeline", "--tensor-parallel", "2", "-v"]);
    // Stage-major: ranks 0 and 1 split the first half of the layers.
    for (rank, stage, t, layers) in [(0, 0, 0, "0..15"), (1, 0, 1, "0..15"), (3, 1, 1, "15..30")] {
        let part = format!("stage={stage} tensor_rank={t} layers={layers}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("[{rank}]")) && l.contains(&part)),
            "rank {rank} does not report {part}: {stderr}"
        );
    }
    let comm = stderr
        .lines()
        .find(|l| l.contains("Communication per token: rank 0 "))
        .unwrap_or_else(|| panic!("no communication line: {stderr}"));
    assert!(comm.contains("; rank 3 "), "{comm}");
}

#[test]
fn a_tensor_size_that_does_not_divide_the_ranks_is_a_one_line_error() {
    let (output, _, stderr) = launch_smollm2(
        4,
        &[
            "generate",
            "--pipeline",
            "--tensor-parallel",
            "3",
            "-p",
            "hi",
        ],
        "",
    );
    assert!(!output.status.success());
    assert!(
        stderr.contains("--tensor-parallel 3 must divide the job's 4 ranks into equal stages"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The free memory each rank reports is faked (a test-only variable): a
/// rank with three times the memory of the other takes about three times
/// the layers, and generation is unchanged.
#[test]
fn stages_are_sized_by_each_ranks_free_memory() {
    let huddle = env!("CARGO_BIN_EXE_huddle");
    let model = support::smollm2();
    let script = format!(
        "HUDDLE_TEST_FREE_MEMORY_MIB=$((1000 + 2000 * HUDDLE_RANK)) exec {huddle} generate \
         --pipeline -v --model '{}' --system '{SYSTEM}' --max-tokens 20 \
         --prompt 'What is the capital of France?'",
        model.display()
    );
    // No hang guard beyond the test harness's: on a busy machine two
    // SmolLM2 ranks in a debug build can take minutes, as in launch_smollm2.
    let output = support::huddle()
        .args(["launch", "-n", "2", "--", "sh", "-c", &script])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("huddle launch runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout.matches("Paris").count(), 1, "{stdout}");
    // 30 layers in proportion 1000:3000 = 7.5:22.5, the tie to stage 0.
    for (rank, layers) in [(0, "layers=0..8"), (1, "layers=8..30")] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("[{rank}]")) && l.contains(layers)),
            "rank {rank} does not hold {layers}: {stderr}"
        );
    }
}

#[test]
fn explicit_layer_counts_that_do_not_add_up_are_refused() {
    let (output, _, stderr) = launch_smollm2(
        2,
        &["generate", "--pipeline", "--layers", "10,10", "-p", "hi"],
        "",
    );
    assert!(!output.status.success());
    assert!(
        stderr.contains("layer counts add up to 20, but the model has 30 layers"),
        "{stderr}"
    );
}

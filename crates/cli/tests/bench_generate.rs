//! `huddle bench generate`: its JSON on a real model, a tiny fixture and
//! two tensor-parallel ranks, and its one-line errors.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lm/tests/fixtures/gguf/qwen2-f32.gguf")
}

fn bench(model: &PathBuf, extra: &[&str]) -> support::Outcome {
    let child = support::huddle()
        .env_remove("HUDDLE_LOCAL_SIZE")
        .args(["bench", "generate", "--model"])
        .arg(model)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start huddle");
    support::finish(child, b"")
}

const TINY: &[&str] = &[
    "--prompt-tokens",
    "8",
    "--gen-tokens",
    "4",
    "--reps",
    "2",
    "--threads",
    "1",
    "--json",
];

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0, "{what} = {x}");
    x
}

/// Checks every field and returns the object.
fn check_report(stdout: &str, ranks: usize, mode: &str) -> Value {
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"));
    assert!(
        report["model"]
            .as_str()
            .is_some_and(|m| m.ends_with(".gguf"))
    );
    assert!(report["architecture"].is_string());
    assert_eq!(report["world_size"], ranks);
    assert_eq!(report["mode"], mode);
    assert_eq!(report["threads"], 1);
    assert_eq!(report["prompt_tokens"], 8);
    assert_eq!(report["gen_tokens"], 4);
    assert_eq!(report["reps"], 2);
    for key in ["prompt_tokens_per_sec", "generation_tokens_per_sec"] {
        let s = &report[key];
        let median = positive(&s["median"], "median");
        let min = positive(&s["min"], "min");
        let max = positive(&s["max"], "max");
        assert!(min <= median && median <= max, "{key}: {s}");
        let runs = s["runs"].as_array().expect("runs array");
        assert_eq!(runs.len(), 2, "{key}: {s}");
        for r in runs {
            positive(r, "run");
        }
    }
    let peaks = report["peak_memory_gb"]
        .as_array()
        .expect("peak_memory_gb array");
    assert_eq!(peaks.len(), ranks, "{report}");
    for p in peaks {
        positive(p, "peak memory");
    }
    report
}

#[test]
fn json_report_on_smollm2_has_every_field_positive() {
    let out = bench(&support::smollm2(), TINY);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let report = check_report(&out.stdout, 1, "single");
    assert_eq!(report["architecture"], "llama");
}

#[test]
fn json_report_on_a_tiny_qwen2_fixture_has_every_field_positive() {
    let out = bench(&fixture(), TINY);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let report = check_report(&out.stdout, 1, "single");
    assert_eq!(report["architecture"], "qwen2");
}

#[test]
fn text_report_names_both_speeds_and_memory() {
    let out = bench(
        &fixture(),
        &["--prompt-tokens", "4", "--gen-tokens", "2", "--reps", "1"],
    );
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    for needle in ["prompt", "generation", "tok/s median", "Peak memory: "] {
        assert!(out.stdout.contains(needle), "{needle}: {}", out.stdout);
    }
}

#[test]
fn two_tensor_parallel_ranks_print_once_with_both_ranks_memory() {
    let huddle = env!("CARGO_BIN_EXE_huddle");
    let child = Command::new(huddle)
        .args(["launch", "-n", "2", "--", huddle, "bench", "generate"])
        .args(TINY)
        .arg("--model")
        .arg(support::smollm2())
        .env_remove("HUDDLE_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start huddle launch");
    let out = support::finish(child, b"");
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {}", out.stdout);
    let json = lines[0]
        .strip_prefix("[0] ")
        .unwrap_or_else(|| panic!("not from rank 0: {}", lines[0]));
    check_report(json, 2, "tensor");
}

fn one_line_error(out: &support::Outcome, needle: &str) {
    assert_eq!(out.code, Some(1), "stderr: {}", out.stderr);
    assert!(out.stdout.is_empty(), "stdout: {}", out.stdout);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {}", out.stderr);
    assert!(lines[0].starts_with("huddle: error: "), "{}", lines[0]);
    assert!(lines[0].contains(needle), "{}", lines[0]);
}

#[test]
fn zero_prompt_tokens_is_a_one_line_error() {
    let out = bench(&fixture(), &["--prompt-tokens", "0"]);
    one_line_error(&out, "--prompt-tokens must be at least 1");
}

#[test]
fn zero_gen_tokens_is_a_one_line_error() {
    let out = bench(&fixture(), &["--gen-tokens", "0"]);
    one_line_error(&out, "--gen-tokens must be at least 1");
}

#[test]
fn a_missing_model_is_a_one_line_error() {
    let out = bench(&PathBuf::from("/nonexistent/model.gguf"), &[]);
    one_line_error(&out, "/nonexistent/model.gguf: no such file");
}

#[test]
fn more_tokens_than_the_context_is_a_one_line_error() {
    // The fixture's context is 512 positions.
    let out = bench(
        &fixture(),
        &["--prompt-tokens", "500", "--gen-tokens", "100"],
    );
    one_line_error(&out, "more than the model's context of 512");
}

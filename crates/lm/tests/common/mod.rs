//! Shared helpers of the model tests: fixture paths, reference logits,
//! the SmolLM2 model file.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{Device, Tensor};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture(name: &str) -> PathBuf {
    let p = fixtures().join(name);
    assert!(
        p.exists(),
        "missing test fixture {}: generate it with scripts/make_fixtures.py",
        p.display()
    );
    p
}

/// `tokens` and reference `logits` `[n, vocab]` of an expected.safetensors.
pub fn expected(path: &std::path::Path) -> (Vec<u32>, Tensor) {
    let t = candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tokens = t["tokens"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect();
    (tokens, t["logits"].clone())
}

/// (max |a - b|, max |b|).
pub fn diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims(), "logit shapes differ");
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let m = b.abs().unwrap().max_all().unwrap();
    (d.to_scalar::<f32>().unwrap(), m.to_scalar::<f32>().unwrap())
}

pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, rel_tol: f32) {
    let (d, m) = diff(got, want);
    assert!(
        d <= rel_tol * m,
        "{what}: max abs diff {d} exceeds {rel_tol} * max|expected| ({m})"
    );
    eprintln!("{what}: max abs diff {d:.3e} (max|expected| {m:.3})");
}

pub fn smollm2() -> PathBuf {
    let p = std::env::var_os("HUDDLE_SMOLLM2")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        p.exists(),
        "missing {}: run scripts/fetch-smollm2.sh (or set HUDDLE_SMOLLM2)",
        p.display()
    );
    p
}

/// What each rank process of [`run_ranks`] printed and how it exited.
pub struct RankExit {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl RankExit {
    /// The rank's `OUTCOME ...` line, or a panic showing what it printed.
    pub fn outcome(&self, rank: usize) -> &str {
        self.stdout
            .lines()
            .find_map(|l| l.find("OUTCOME").map(|at| &l[at..]))
            .unwrap_or_else(|| {
                panic!(
                    "rank {rank} reported nothing: {}\n{}",
                    self.stdout, self.stderr
                )
            })
    }
}

/// Runs `size` ranks of a job on loopback as real processes: the test
/// binary re-runs test `test` once per rank with the launcher's
/// environment (HUDDLE_RANK, HUDDLE_COORDINATOR, ...) and `role` set to
/// the rank, which that test reads to play its part. Waits for them all.
pub fn run_ranks(role: &str, test: &str, size: usize) -> Vec<RankExit> {
    use std::process::{Command, Stdio};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token: String = (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..size)
        .map(|rank| {
            Command::new(&exe)
                .args(["--exact", test, "--nocapture", "--test-threads=1"])
                .env(role, rank.to_string())
                .env("HUDDLE_RANK", rank.to_string())
                .env("HUDDLE_WORLD_SIZE", size.to_string())
                .env("HUDDLE_COORDINATOR", format!("127.0.0.1:{port}"))
                .env("HUDDLE_JOB_TOKEN", &token)
                // A hang guard only: a closed socket is noticed at once.
                .env("HUDDLE_PEER_TIMEOUT", "20")
                .env_remove("HUDDLE_LOCAL_RANK")
                .env_remove("HUDDLE_LOCAL_SIZE")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            RankExit {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .collect()
}

//! Runs ranks as real processes over real sockets: the test binary starts
//! copies of itself that run only `rank_worker`, which reads its scenario
//! and rank from the environment.

#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SCENARIO: &str = "HUDDLE_TEST_SCENARIO";

pub struct Rank {
    pub child: Child,
    pub out: Arc<Mutex<String>>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pipe(mut r: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

/// Starts `n` ranks of `scenario`; `extra(rank)` adds or overrides env vars.
pub fn launch(
    scenario: &str,
    n: usize,
    extra: impl Fn(usize) -> Vec<(String, String)>,
) -> Vec<Rank> {
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    (0..n)
        .map(|r| {
            let mut cmd = Command::new(&exe);
            cmd.args(["--exact", "rank_worker", "--nocapture", "--test-threads=1"])
                .env(SCENARIO, scenario)
                .env("HUDDLE_RANK", r.to_string())
                .env("HUDDLE_WORLD_SIZE", n.to_string())
                .env("HUDDLE_LOCAL_RANK", r.to_string())
                .env("HUDDLE_LOCAL_SIZE", n.to_string())
                .env("HUDDLE_COORDINATOR", format!("127.0.0.1:{port}"))
                .env("HUDDLE_JOB_TOKEN", "5ec12e70")
                .env("HUDDLE_JOIN_TIMEOUT", "60")
                .env_remove("HUDDLE_ALGO")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for (k, v) in extra(r) {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().unwrap();
            let out = Arc::new(Mutex::new(String::new()));
            pipe(child.stdout.take().unwrap(), out.clone());
            pipe(child.stderr.take().unwrap(), out.clone());
            Rank { child, out }
        })
        .collect()
}

/// Waits for every rank; kills them all and fails the test if any is still
/// running after `guard` (a hang guard, not a timing assertion).
pub fn finish(mut ranks: Vec<Rank>, guard: Duration) -> Vec<(Option<i32>, String)> {
    let start = Instant::now();
    let mut codes: Vec<Option<Option<i32>>> = vec![None; ranks.len()];
    while codes.iter().any(Option::is_none) {
        for (i, r) in ranks.iter_mut().enumerate() {
            if codes[i].is_none()
                && let Some(st) = r.child.try_wait().unwrap()
            {
                codes[i] = Some(st.code());
            }
        }
        if start.elapsed() > guard {
            for r in ranks.iter_mut() {
                let _ = r.child.kill();
            }
            let outs: Vec<String> = ranks
                .iter()
                .map(|r| r.out.lock().unwrap().clone())
                .collect();
            panic!("ranks still running after {guard:?} (hang); outputs: {outs:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the reader threads drain the pipes.
    std::thread::sleep(Duration::from_millis(50));
    ranks
        .iter()
        .zip(codes)
        .map(|(r, c)| (c.flatten(), r.out.lock().unwrap().clone()))
        .collect()
}

/// Runs a scenario to completion and asserts every rank passed.
pub fn run_ok(scenario: &str, n: usize, extra: impl Fn(usize) -> Vec<(String, String)>) {
    let results = finish(launch(scenario, n, extra), Duration::from_secs(240));
    for (r, (code, out)) in results.iter().enumerate() {
        assert_eq!(
            *code,
            Some(0),
            "rank {r} of {n} failed in `{scenario}`:\n{out}"
        );
        assert!(
            out.contains("SCENARIO OK"),
            "rank {r} did not finish `{scenario}`:\n{out}"
        );
    }
}

pub fn wait_for(ranks: &[Rank], text: &str, guard: Duration) {
    let start = Instant::now();
    while !ranks.iter().all(|r| r.out.lock().unwrap().contains(text)) {
        assert!(start.elapsed() < guard, "ranks never printed {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

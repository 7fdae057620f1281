//! A pipeline stage that dies in the middle of a step ends the driving
//! rank, which waits for the last stage's logits, with an error naming it
//! instead of a hang. Real processes: the test binary re-runs itself once
//! per rank with the launcher's environment.

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};

use huddle_comm::Group;
use huddle_lm::engine::{self, Step};
use huddle_lm::{LoadOptions, Logits, sharded_load};

const ROLE: &str = "HUDDLE_PP_DEATH_TEST_RANK";
const TEST: &str = "a_stage_dying_mid_step_ends_the_driving_rank_with_an_error_naming_it";

/// One rank's part; exits the process with what happened on stdout.
fn rank_main(rank: usize) -> ! {
    let world = huddle_comm::init_strict().expect("launcher environment");
    let opts = LoadOptions::default();
    let mut model = sharded_load(&common::fixture("llama"), &opts, &world, &Group::single())
        .expect("model loads");
    if rank == 1 {
        // Take the step, then vanish before passing hidden states on.
        let step = engine::receive(&world).expect("first step arrives");
        assert!(matches!(step, Step::Forward { .. }));
        std::process::exit(3);
    }
    match model.forward(&[1, 2, 3, 4], Logits::All) {
        Ok(_) => println!("OUTCOME ok"),
        Err(e) => println!("OUTCOME error: {e}"),
    }
    std::process::exit(0);
}

#[test]
fn a_stage_dying_mid_step_ends_the_driving_rank_with_an_error_naming_it() {
    if let Some(rank) = std::env::var(ROLE).ok().and_then(|r| r.parse().ok()) {
        rank_main(rank);
    }
    let size = 2;
    let port = TcpListener::bind("127.0.0.1:0")
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
                .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
                .env(ROLE, rank.to_string())
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
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if rank == 1 {
            assert_eq!(out.status.code(), Some(3), "rank 1: {stdout}\n{stderr}");
            continue;
        }
        let line = stdout
            .lines()
            .find_map(|l| l.find("OUTCOME").map(|at| &l[at..]))
            .unwrap_or_else(|| panic!("rank 0 reported nothing: {stdout}\n{stderr}"));
        assert!(
            line.contains("error") && line.contains("rank 1"),
            "rank 0: {line}"
        );
        eprintln!("rank 0: {line}");
    }
}

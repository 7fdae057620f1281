//! A rank that dies in the middle of a step ends every other rank of the
//! tensor group with an error naming it, instead of a hang. Real processes:
//! the test binary re-runs itself once per rank with the launcher's
//! environment (HUDDLE_RANK, HUDDLE_COORDINATOR, ...).

mod common;

use huddle_lm::engine::{self, Step};
use huddle_lm::{LoadOptions, Logits, Model};

const ROLE: &str = "HUDDLE_TP_DEATH_TEST_RANK";
const TEST: &str = "a_rank_dying_mid_step_ends_every_rank_with_an_error_naming_it";
const DYING: usize = 1;

/// One rank's part; exits the process with what happened on stdout.
fn rank_main(rank: usize) -> ! {
    let group = huddle_comm::init_strict().expect("launcher environment");
    let mut model = Model::load_sharded(&common::fixture("llama"), &LoadOptions::default(), &group)
        .expect("model loads");
    let outcome = if rank == 0 {
        model.forward(&[1, 2, 3, 4], Logits::All).map(drop)
    } else if rank == DYING {
        // Take the step, then vanish before its first all_sum.
        let step = engine::receive(&group).expect("first step arrives");
        assert!(matches!(step, Step::Forward { .. }));
        std::process::exit(3);
    } else {
        model.follow()
    };
    match outcome {
        Ok(()) => println!("OUTCOME ok"),
        Err(e) => println!("OUTCOME error: {e}"),
    }
    std::process::exit(0);
}

#[test]
fn a_rank_dying_mid_step_ends_every_rank_with_an_error_naming_it() {
    if let Some(rank) = std::env::var(ROLE).ok().and_then(|r| r.parse().ok()) {
        rank_main(rank);
    }
    for (rank, exit) in common::run_ranks(ROLE, TEST, 3).iter().enumerate() {
        if rank == DYING {
            assert_eq!(
                exit.code,
                Some(3),
                "rank {rank}: {}\n{}",
                exit.stdout,
                exit.stderr
            );
            continue;
        }
        let line = exit.outcome(rank);
        assert!(
            line.contains("error") && line.contains(&format!("rank {DYING}")),
            "rank {rank}: {line}"
        );
        eprintln!("rank {rank}: {line}");
    }
}

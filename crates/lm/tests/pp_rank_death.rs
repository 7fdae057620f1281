//! A pipeline stage that dies in the middle of a step ends the driving
//! rank, which waits for the last stage's logits, with an error naming it
//! instead of a hang. Real processes: the test binary re-runs itself once
//! per rank with the launcher's environment.

mod common;

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
    let exits = common::run_ranks(ROLE, TEST, 2);
    let dying = &exits[1];
    assert_eq!(
        dying.code,
        Some(3),
        "rank 1: {}\n{}",
        dying.stdout,
        dying.stderr
    );
    let line = exits[0].outcome(0);
    assert!(
        line.contains("error") && line.contains("rank 1"),
        "rank 0: {line}"
    );
    eprintln!("rank 0: {line}");
}

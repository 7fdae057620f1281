//! Tensor-parallel generation and chat through the launcher: two local
//! ranks split SmolLM2; only rank 0 reads stdin and prints.

mod support;

use support::{chat_paris_twice, generate_paris};

#[test]
fn generate_on_two_ranks_prints_paris_once_from_rank_0() {
    generate_paris(2, &[]);
}

#[test]
fn chat_on_two_ranks_answers_from_rank_0_and_both_exit_at_end_of_input() {
    chat_paris_twice(&[]);
}

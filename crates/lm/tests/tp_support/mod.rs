//! What the tensor-parallel tests share: a group of real TCP ranks (one
//! thread each) that loads a model split, and the comparison with one rank.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use candle_core::Tensor;
use huddle_comm::{Group, GroupBuilder};
use huddle_lm::{LoadOptions, Logits, Model};

use crate::common;

/// The chat template's opening plus a short sentence.
pub const SMOLLM2_TOKENS: [u32; 11] = [1, 9690, 198, 19556, 28, 905, 17, 657, 506, 253, 3953];

pub fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", l.local_addr().unwrap().port())
}

/// Logits of `tokens` in one pass, then of `tokens[split..]` again after
/// rewinding the cache to `split` (a chat turn reusing its prefix).
pub fn run(model: &mut Model, tokens: &[u32]) -> (Tensor, Tensor) {
    let split = tokens.len() / 2;
    let all = model.forward(tokens, Logits::All).unwrap();
    model.truncate_kv(split);
    let rest = model.forward(&tokens[split..], Logits::All).unwrap();
    (all, rest)
}

/// [`run`] on rank 0 of a group of `size` ranks (threads of one TCP
/// group), the others following; `load` builds each rank's model.
pub fn on_ranks(
    size: usize,
    tokens: &[u32],
    load: impl Fn(usize, Group) -> Model + Sync,
) -> (Tensor, Tensor) {
    let addr = free_addr();
    let token: Vec<u8> = (0..16).map(|_| rand::random::<u8>()).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..size)
            .map(|rank| {
                let (addr, token, load) = (addr.clone(), token.clone(), &load);
                s.spawn(move || {
                    let group = GroupBuilder::new(rank, size, addr, &token)
                        .peer_timeout(Duration::from_secs(120))
                        .build()
                        .unwrap();
                    let mut model = load(rank, group);
                    if rank != 0 {
                        model.follow().unwrap();
                        return None;
                    }
                    Some(run(&mut model, tokens))
                })
            })
            .collect();
        let mut out = None;
        for h in handles {
            if let Some(t) = h.join().unwrap() {
                out = Some(t);
            }
        }
        out.unwrap()
    })
}

/// [`run`] on rank 0 of a tensor-parallel group of `size` ranks.
pub fn tp_logits(path: &Path, size: usize, tokens: &[u32], opts: &LoadOptions) -> (Tensor, Tensor) {
    on_ranks(size, tokens, |_, group| {
        Model::load_sharded(path, opts, &group).unwrap()
    })
}

pub fn matches_single_rank(path: &Path, sizes: &[usize], tokens: &[u32], tol: f32) {
    matches_single_rank_with(path, sizes, tokens, tol, &LoadOptions::default());
}

/// [`matches_single_rank`] with the ranks loading with `opts`.
pub fn matches_single_rank_with(
    path: &Path,
    sizes: &[usize],
    tokens: &[u32],
    tol: f32,
    opts: &LoadOptions,
) {
    let (want, want_rest) = run(
        &mut Model::load(path, &LoadOptions::default()).unwrap(),
        tokens,
    );
    for &size in sizes {
        let (got, got_rest) = tp_logits(path, size, tokens, opts);
        let what = format!("{} on {size} ranks ({:?})", path.display(), opts.tp_reduce);
        assert_matches(&what, (&got, &got_rest), (&want, &want_rest), tol);
    }
}

/// Logits within `tol` x max|logit| of one rank's, and the same greedy
/// token wherever one rank's top two are more than 10x that apart (a
/// closer race may flip within tolerance). `got` and `want` are the pairs
/// [`run`] returns.
pub fn assert_matches(what: &str, got: (&Tensor, &Tensor), want: (&Tensor, &Tensor), tol: f32) {
    common::assert_close(what, got.0, want.0, tol);
    let rewound = format!("{what}, after a rewind");
    common::assert_close(&rewound, got.1, want.1, tol);
    assert_greedy_agrees(what, got.0, want.0, tol);
    assert_greedy_agrees(&rewound, got.1, want.1, tol);
}

fn assert_greedy_agrees(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let (_, max) = common::diff(got, want);
    let got = got.to_vec2::<f32>().unwrap();
    let want = want.to_vec2::<f32>().unwrap();
    let mut decided = 0;
    for (pos, (g, w)) in got.iter().zip(&want).enumerate() {
        let (best, margin) = top_two(w);
        if margin > 10.0 * tol * max {
            decided += 1;
            assert_eq!(
                top_two(g).0,
                best,
                "{what}: position {pos} greedy token differs (one rank's margin {margin})"
            );
        }
    }
    eprintln!(
        "{what}: greedy token equal at {decided} of {} positions with a clear margin",
        want.len()
    );
}

/// Index of the largest value, and its lead over the second largest.
fn top_two(row: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    let mut second = f32::NEG_INFINITY;
    for (i, &x) in row.iter().enumerate() {
        if x > best.1 {
            second = best.1;
            best = (i, x);
        } else if x > second {
            second = x;
        }
    }
    (best.0, best.1 - second)
}

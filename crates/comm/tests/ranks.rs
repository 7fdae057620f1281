//! Behaviour across real processes: every op, dtype and awkward length
//! against a serial reference, ring vs mesh bits, subgroups at once,
//! non-blocking calls, failures (kill -9, SIGSTOP, wrong token, mismatches).

mod common;

use std::time::Duration;

use common::{SCENARIO, env, finish, launch, run_ok, wait_for};
use huddle_comm::{Algo, CommError, Element, Group, ReduceOp, bf16, f16};

// ---------------------------------------------------------------- worker

#[test]
fn rank_worker() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let result = huddle_comm::init_strict().and_then(|g| match scenario.as_str() {
        "ops" => ops(&g),
        "bits" => bits(&g),
        "split" => split(&g),
        "async" => nonblocking(&g),
        "mismatch" => mismatch(&g),
        "loop" => forever(&g, 50_000),
        "loop_small" => forever(&g, 4),
        "join" => Ok(()),
        "smoke" => smoke(&g),
        "leave" => {
            // Rank 1 closes its group at once; rank 0 waits for a message
            // that will never come and must get an error, not hang.
            if g.rank() == 0 {
                let mut buf = [0f32; 4];
                g.recv(&mut buf, 1)
            } else {
                Ok(())
            }
        }
        "idle" => {
            // Rank 1 is alive but silent in the collective for longer than
            // the peer timeout: heartbeats must keep it from being declared lost.
            if g.rank() == 1 {
                std::thread::sleep(Duration::from_secs(3));
            }
            smoke(&g)
        }
        other => panic!("unknown scenario {other}"),
    });
    match result {
        Ok(()) => {
            println!("SCENARIO OK");
            std::process::exit(0)
        }
        Err(e) => {
            println!("ERROR[{}]: {e}", kind(&e));
            std::process::exit(3)
        }
    }
}

fn kind(e: &CommError) -> &'static str {
    match e {
        CommError::PeerLost { .. } => "PeerLost",
        CommError::Mismatch { .. } => "Mismatch",
        CommError::Auth { .. } => "Auth",
        CommError::JoinTimeout { .. } => "JoinTimeout",
        CommError::Bootstrap(_) => "Bootstrap",
        CommError::Aborted { .. } => "Aborted",
        _ => "Other",
    }
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), CommError> {
    if ok {
        Ok(())
    } else {
        Err(CommError::InvalidArgument(format!(
            "WRONG RESULT: {}",
            what()
        )))
    }
}

/// Exact small integers in every type, so any summation order gives the
/// same answer and a plain serial fold is the reference.
trait FromInt: Element {
    fn from_i(v: i64) -> Self;
}
macro_rules! from_int {
    ($t:ty, $e:expr) => {
        impl FromInt for $t {
            fn from_i(v: i64) -> Self {
                let f: fn(i64) -> $t = $e;
                f(v)
            }
        }
    };
}
from_int!(f32, |v| v as f32);
from_int!(f64, |v| v as f64);
from_int!(i32, |v| v as i32);
from_int!(i64, |v| v);
from_int!(u8, |v| v as u8);
from_int!(f16, |v| f16::from_f32(v as f32));
from_int!(bf16, |v| bf16::from_f32(v as f32));

fn value(rank: usize, i: usize, salt: u64, op: ReduceOp) -> i64 {
    let mut z =
        (rank as u64 * 1_000_003 + i as u64 * 7919 + salt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z ^= z >> 29;
    match op {
        ReduceOp::Prod => [1, -1, 1, 2, 1, -1, 1, 1][(z % 8) as usize],
        _ => (z % 17) as i64 - 8,
    }
}

fn input<T: FromInt>(rank: usize, len: usize, salt: u64, op: ReduceOp) -> Vec<T> {
    (0..len)
        .map(|i| T::from_i(value(rank, i, salt, op)))
        .collect()
}

fn reference<T: FromInt>(n: usize, len: usize, salt: u64, op: ReduceOp) -> Vec<T> {
    let mut acc = input::<T>(0, len, salt, op);
    for r in 1..n {
        for (a, b) in acc.iter_mut().zip(input::<T>(r, len, salt, op)) {
            *a = T::combine(op, *a, b);
        }
    }
    acc
}

fn ops_for<T: FromInt>(g: &Group, lens: &[usize]) -> Result<(), CommError> {
    let (n, r) = (g.size(), g.rank());
    let name = T::DTYPE.name();
    for algo in [Algo::Ring, Algo::Mesh, Algo::Auto] {
        let g = &g.with_algo(algo);
        for &len in lens {
            let salt = len as u64 * 31 + T::DTYPE as u64;
            for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::Prod] {
                let mut buf = input::<T>(r, len, salt, op);
                g.all_reduce(&mut buf, op)?;
                check(buf == reference::<T>(n, len, salt, op), || {
                    format!("{algo:?} all_{op:?} {name} len {len}")
                })?;
            }
            // reduce_scatter
            for op in [ReduceOp::Sum, ReduceOp::Min] {
                let inp = input::<T>(r, len, salt + 1, op);
                let part = g.reduce_scatter_part(len, r);
                let mut out = vec![T::from_i(0); part.len()];
                g.reduce_scatter(&inp, &mut out, op)?;
                check(
                    out[..] == reference::<T>(n, len, salt + 1, op)[part],
                    || format!("{algo:?} reduce_scatter {op:?} {name} len {len}"),
                )?;
            }
            // all_gather, equal and varied counts
            let mine = input::<T>(r, len, salt + 2, ReduceOp::Sum);
            let mut out = vec![T::from_i(0); n * len];
            g.all_gather(&mine, &mut out)?;
            let want: Vec<T> = (0..n)
                .flat_map(|q| input::<T>(q, len, salt + 2, ReduceOp::Sum))
                .collect();
            check(out == want, || {
                format!("{algo:?} all_gather {name} len {len}")
            })?;
            let counts: Vec<usize> = (0..n).map(|q| (len + q * 3) % (len + 2)).collect();
            let mine = input::<T>(r, counts[r], salt + 3, ReduceOp::Sum);
            let mut out = vec![T::from_i(0); counts.iter().sum()];
            g.all_gather_varied(&mine, &mut out, &counts)?;
            let want: Vec<T> = (0..n)
                .flat_map(|q| input::<T>(q, counts[q], salt + 3, ReduceOp::Sum))
                .collect();
            check(out == want, || {
                format!("{algo:?} all_gather_varied {name} counts {counts:?}")
            })?;
            // broadcast from a root that moves with the length
            let root = len % n;
            let mut buf = if r == root {
                input::<T>(root, len, salt + 4, ReduceOp::Sum)
            } else {
                vec![T::from_i(0); len]
            };
            g.broadcast(&mut buf, root)?;
            check(
                buf == input::<T>(root, len, salt + 4, ReduceOp::Sum),
                || format!("{algo:?} broadcast {name} len {len}"),
            )?;
            // send to every other rank first, then receive from every one:
            // sends are buffered, so this must not deadlock.
            for q in (0..n).filter(|&q| q != r) {
                g.send(&input::<T>(r * 100 + q, len, salt + 5, ReduceOp::Sum), q)?;
            }
            for q in (0..n).filter(|&q| q != r) {
                let mut buf = vec![T::from_i(0); len];
                g.recv(&mut buf, q)?;
                check(
                    buf == input::<T>(q * 100 + r, len, salt + 5, ReduceOp::Sum),
                    || format!("recv {name} len {len} from {q}"),
                )?;
            }
            g.barrier()?;
        }
    }
    Ok(())
}

fn ops(g: &Group) -> Result<(), CommError> {
    let n = g.size();
    let mut lens = vec![0, 1, 2, n.saturating_sub(1), n, n + 1, 2 * n + 3, 1000];
    lens.sort();
    lens.dedup();
    ops_for::<f32>(g, &lens)?;
    ops_for::<f16>(g, &lens)?;
    ops_for::<bf16>(g, &lens)?;
    ops_for::<f64>(g, &lens)?;
    ops_for::<i32>(g, &lens)?;
    ops_for::<i64>(g, &lens)?;
    ops_for::<u8>(g, &lens)?;
    Ok(())
}

// ---------------------------------------------------------------- bits

fn random_f32(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let z = ((rank * 7_777_777 + i) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            ((z >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 10f32.powi((z % 7) as i32 - 3)
        })
        .collect()
}

/// The documented canonical order: halves on the forward and reverse ring,
/// n balanced chunks each, chunk c folded c, c+d, c+2d, ...
fn canonical(n: usize, len: usize) -> Vec<f32> {
    let inputs: Vec<Vec<f32>> = (0..n).map(|r| random_f32(r, len)).collect();
    let h = len.div_ceil(2);
    let mut out = vec![0f32; len];
    for (start, hl, d) in [(0, h, 1isize), (h, len - h, -1)] {
        for c in 0..n {
            let (a, b) = (c * hl / n, (c + 1) * hl / n);
            for i in start + a..start + b {
                let mut acc = inputs[c][i];
                for k in 1..n as isize {
                    acc += inputs[(c as isize + d * k).rem_euclid(n as isize) as usize][i];
                }
                out[i] = acc;
            }
        }
    }
    out
}

fn bits(g: &Group) -> Result<(), CommError> {
    let (n, r) = (g.size(), g.rank());
    for len in [1, 5, 1000, 300_001] {
        let want = canonical(n, len);
        let mut runs = Vec::new();
        for algo in [Algo::Ring, Algo::Mesh, Algo::Ring, Algo::Auto] {
            let mut buf = random_f32(r, len);
            g.with_algo(algo).all_sum(&mut buf)?;
            runs.push(buf.iter().map(|x| x.to_bits()).collect::<Vec<u32>>());
        }
        let want: Vec<u32> = want.iter().map(|x| x.to_bits()).collect();
        for (i, run) in runs.iter().enumerate() {
            check(*run == want, || {
                format!("len {len}: run {i} differs from the canonical order")
            })?;
        }
        // And every rank holds the same bits.
        let hash = runs[0]
            .iter()
            .fold(0i64, |h, b| h.wrapping_mul(31).wrapping_add(*b as i64));
        let mut all = vec![0i64; n];
        g.all_gather(&[hash], &mut all)?;
        check(all.iter().all(|h| *h == hash), || {
            format!("len {len}: ranks disagree: {all:?}")
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------- split, async

fn split(g: &Group) -> Result<(), CommError> {
    let r = g.rank();
    // Odd and even ranks, in reverse order; and low and high halves.
    let parity = g.split((r % 2) as u32, 100 - r as u32)?;
    let halves = g.split((r / 2) as u32, r as u32)?;
    check(parity.size() == 2 && halves.size() == 2, || {
        "subgroup sizes".into()
    })?;
    check(parity.members()[0] > parity.members()[1], || {
        format!("key order {:?}", parity.members())
    })?;
    let worker = {
        let parity = parity.clone();
        std::thread::spawn(move || -> Result<(), CommError> {
            for i in 0..40 {
                let mut v = vec![(parity.world_rank() * 10 + i) as i64; 33];
                parity.all_sum(&mut v)?;
                let want: i64 = parity.members().iter().map(|&w| (w * 10 + i) as i64).sum();
                check(v.iter().all(|x| *x == want), || "parity sum".into())?;
            }
            Ok(())
        })
    };
    for i in 0..40 {
        let mut v = vec![(halves.world_rank() + i) as f64; 1 + i];
        halves.all_max(&mut v)?;
        let want = (halves.members().iter().max().copied().unwrap_or(0) + i) as f64;
        check(v.iter().all(|x| *x == want), || "halves max".into())?;
    }
    worker
        .join()
        .map_err(|_| CommError::InvalidArgument("worker panicked".into()))??;
    g.barrier()
}

fn nonblocking(g: &Group) -> Result<(), CommError> {
    let (n, r) = (g.size(), g.rank());
    let a = g.all_sum_async(vec![r as f32; 100_000]);
    let b = g.all_gather_async(vec![r as i32; 3]);
    let mut c = vec![1u8; 10];
    g.all_sum(&mut c)?;
    let next = (r + 1) % n;
    let prev = (r + n - 1) % n;
    let s = g.send_async(vec![r as i64; 70_000], next);
    let rv = g.recv_async(vec![0i64; 70_000], prev);
    let total = (0..n).sum::<usize>() as f32;
    check(a.wait()?.iter().all(|x| *x == total), || {
        "async all_sum".into()
    })?;
    let want: Vec<i32> = (0..n as i32).flat_map(|q| [q; 3]).collect();
    check(b.wait()? == want, || "async all_gather".into())?;
    check(c.iter().all(|x| *x == n as u8), || {
        "blocking all_sum between async ones".into()
    })?;
    s.wait()?;
    check(rv.wait()?.iter().all(|x| *x == prev as i64), || {
        "async recv".into()
    })?;
    Ok(())
}

fn smoke(g: &Group) -> Result<(), CommError> {
    let mut v = vec![g.rank() as i64 + 1; 1000];
    g.all_sum(&mut v)?;
    let n = g.size() as i64;
    check(v.iter().all(|x| *x == n * (n + 1) / 2), || {
        "smoke all_sum".into()
    })
}

fn mismatch(g: &Group) -> Result<(), CommError> {
    let mut v = vec![1f32; 10 + g.rank()];
    g.all_sum(&mut v)
}

fn forever(g: &Group, len: usize) -> Result<(), CommError> {
    let mut v = vec![1f32; len];
    let mut first = true;
    loop {
        g.all_sum(&mut v)?;
        v.fill(1.0);
        if first {
            println!("READY");
            first = false;
        }
    }
}

// ---------------------------------------------------------------- tests

fn tuned(algo: &'static str) -> impl Fn(usize) -> Vec<(String, String)> {
    move |_| {
        env(&[
            ("HUDDLE_PIECE_BYTES", "512"),
            ("HUDDLE_ALGO", algo),
            ("HUDDLE_CONNS_PER_PEER", "2"),
        ])
    }
}

#[test]
fn every_op_and_dtype_matches_the_reference_with_one_rank() {
    run_ok("ops", 1, tuned("auto"));
}

#[test]
fn every_op_and_dtype_matches_the_reference_with_two_ranks() {
    run_ok("ops", 2, tuned("auto"));
}

#[test]
fn every_op_and_dtype_matches_the_reference_with_three_ranks() {
    run_ok("ops", 3, tuned("auto"));
}

#[test]
fn every_op_and_dtype_matches_the_reference_with_four_ranks() {
    run_ok("ops", 4, tuned("ring"));
}

#[test]
fn every_op_and_dtype_matches_the_reference_with_seven_ranks() {
    run_ok("ops", 7, |_| {
        env(&[
            ("HUDDLE_PIECE_BYTES", "4096"),
            ("HUDDLE_ALGO", "mesh"),
            ("HUDDLE_CONNS_PER_PEER", "1"),
        ])
    });
}

#[test]
fn ring_and_mesh_sums_are_bit_identical_to_the_canonical_order() {
    run_ok("bits", 3, |_| Vec::new());
    run_ok("bits", 4, |_| env(&[("HUDDLE_CONNS_PER_PEER", "3")]));
}

#[test]
fn subgroups_run_at_the_same_time() {
    run_ok("split", 4, |_| Vec::new());
}

#[test]
fn nonblocking_calls_overlap_with_blocking_ones() {
    run_ok("async", 3, |_| env(&[("HUDDLE_ALGO", "ring")]));
}

fn assert_error(out: &str, kind: &str, names: &[&str]) {
    let line = out
        .lines()
        .find_map(|l| l.find("ERROR[").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no error reported:\n{out}"));
    assert!(
        line.starts_with(&format!("ERROR[{kind}]")),
        "expected a {kind} error, got: {line}"
    );
    for n in names {
        assert!(line.contains(n), "error does not name `{n}`: {line}");
    }
}

#[test]
fn mismatched_lengths_are_an_error_naming_both_ranks() {
    let results = finish(
        launch("mismatch", 2, |_| env(&[("HUDDLE_ALGO", "mesh")])),
        Duration::from_secs(60),
    );
    for (code, out) in &results {
        assert_eq!(*code, Some(3), "{out}");
        assert!(out.contains("rank 0") && out.contains("rank 1"), "{out}");
    }
    assert!(
        results
            .iter()
            .any(|(_, out)| out.contains("ERROR[Mismatch]")),
        "{results:?}"
    );
}

/// `scenario` "loop" runs large ring all_sums (the I/O thread reads);
/// "loop_small" tiny mesh ones (the waiting callers read the sockets).
fn kill_rank_2(scenario: &str, signal: libc::c_int, timeout: &str) {
    let algo = if scenario == "loop" { "ring" } else { "mesh" };
    let ranks = launch(scenario, 3, |_| {
        env(&[("HUDDLE_PEER_TIMEOUT", timeout), ("HUDDLE_ALGO", algo)])
    });
    wait_for(&ranks, "READY", Duration::from_secs(60));
    // SAFETY: signalling a child process this test started.
    unsafe { libc::kill(ranks[2].child.id() as libc::pid_t, signal) };
    let pid2 = ranks[2].child.id() as libc::pid_t;
    let guard = std::thread::spawn(move || {
        // A stopped rank never exits by itself: end it once the others had
        // ample time to notice (this is a hang guard, not a timing check).
        std::thread::sleep(Duration::from_secs(30));
        // SAFETY: as above.
        unsafe { libc::kill(pid2, libc::SIGKILL) };
    });
    let mut ranks = ranks;
    let stopped = ranks.pop();
    let results = finish(ranks, Duration::from_secs(60));
    for (r, (code, out)) in results.iter().enumerate() {
        assert_eq!(*code, Some(3), "rank {r}: {out}");
        assert_error(out, "PeerLost", &["rank 2"]);
    }
    if let Some(mut r) = stopped {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    drop(guard);
}

#[test]
fn a_killed_rank_is_reported_by_every_other_rank() {
    kill_rank_2("loop", libc::SIGKILL, "30");
}

#[test]
fn a_killed_rank_is_reported_by_ranks_waiting_on_tiny_messages() {
    kill_rank_2("loop_small", libc::SIGKILL, "30");
}

#[test]
fn a_stopped_rank_is_reported_by_ranks_waiting_on_tiny_messages() {
    kill_rank_2("loop_small", libc::SIGSTOP, "2");
}

#[test]
fn a_stopped_rank_is_reported_after_the_peer_timeout() {
    kill_rank_2("loop", libc::SIGSTOP, "2");
}

#[test]
fn a_wrong_token_is_refused() {
    let results = finish(
        launch("join", 2, |r| {
            let mut e = env(&[("HUDDLE_JOIN_TIMEOUT", "3")]);
            if r == 1 {
                e.push(("HUDDLE_JOB_TOKEN".into(), "0bad".into()));
            }
            e
        }),
        Duration::from_secs(60),
    );
    assert_error(&results[1].1, "Auth", &["token"]);
    assert_error(&results[0].1, "JoinTimeout", &["rank(s) 1", "refused"]);
}

#[test]
fn a_duplicate_rank_is_refused_naming_it() {
    let results = finish(
        launch("join", 3, |r| {
            if r == 2 {
                env(&[("HUDDLE_RANK", "1"), ("HUDDLE_JOIN_TIMEOUT", "20")])
            } else {
                env(&[("HUDDLE_JOIN_TIMEOUT", "20")])
            }
        }),
        Duration::from_secs(60),
    );
    assert_error(&results[0].1, "Bootstrap", &["rank 1 joined twice"]);
}

#[test]
fn a_world_size_mismatch_is_refused_naming_both_sides() {
    let results = finish(
        launch("join", 2, |r| {
            if r == 1 {
                env(&[("HUDDLE_WORLD_SIZE", "3"), ("HUDDLE_JOIN_TIMEOUT", "20")])
            } else {
                env(&[("HUDDLE_JOIN_TIMEOUT", "20")])
            }
        }),
        Duration::from_secs(60),
    );
    assert_error(
        &results[0].1,
        "Bootstrap",
        &["rank 1 has world size 3", "rank 0 has world size 2"],
    );
    assert_error(&results[1].1, "Bootstrap", &["world size 3"]);
}

#[test]
fn ipv6_and_hostname_coordinators_work() {
    for host in ["[::1]", "localhost"] {
        let coordinator = format!("{host}:{}", common::free_port());
        run_ok("smoke", 3, |_| env(&[("HUDDLE_COORDINATOR", &coordinator)]));
    }
}

#[test]
fn a_coordinator_that_starts_late_is_retried() {
    run_ok("smoke", 3, |r| {
        if r == 0 {
            env(&[("HUDDLE_TEST_DELAY_MS", "1500")])
        } else {
            Vec::new()
        }
    });
}

#[test]
fn waiting_on_a_live_but_busy_peer_has_no_limit() {
    run_ok("idle", 2, |_| env(&[("HUDDLE_PEER_TIMEOUT", "1")]));
}

#[test]
fn a_rank_that_leaves_early_is_named_by_the_one_waiting_for_it() {
    let results = finish(launch("leave", 2, |_| Vec::new()), Duration::from_secs(60));
    assert_eq!(results[1].0, Some(0), "{}", results[1].1);
    assert_error(&results[0].1, "PeerLost", &["rank 1", "closed its group"]);
}

#[test]
fn init_without_a_launcher_is_a_single_rank_group() {
    if std::env::var(SCENARIO).is_ok() || std::env::var("HUDDLE_RANK").is_ok() {
        return;
    }
    let g = huddle_comm::init().unwrap();
    assert_eq!((g.rank(), g.size()), (0, 1));
    let mut v = vec![2.0f32, 3.0];
    g.all_sum(&mut v).unwrap();
    assert_eq!(v, [2.0, 3.0]);
    let mut out = vec![0f32; 2];
    g.all_gather(&v, &mut out).unwrap();
    assert_eq!(out, v);
    assert!(matches!(
        huddle_comm::init_strict(),
        Err(CommError::NotLaunched)
    ));
}

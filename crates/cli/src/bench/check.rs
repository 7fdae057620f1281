//! `huddle bench comm --check`: every collective once per size on values
//! that depend on the rank and the element, each result compared exactly
//! with what it must be. The values are small integers (and powers of two
//! for the product), so every sum and product is exact in f32 and any
//! wrong, missing or misplaced element shows.

use anyhow::bail;
use huddle_comm::{Group, ReduceOp};

/// Rank `r`'s element `i`: 1..=17, spread so neighbours differ.
fn value(r: usize, i: usize) -> f32 {
    ((r * 31 + i * 7) % 17) as f32 + 1.0
}

/// 1 or 2, so the product over ranks is a power of two.
fn factor(r: usize, i: usize) -> f32 {
    if (r + i).is_multiple_of(3) { 2.0 } else { 1.0 }
}

/// The first element of `got` that differs from `want(i)`, described.
fn first_mismatch(
    what: &str,
    got: &[f32],
    want: impl Fn(usize) -> f32,
    len: usize,
) -> Option<String> {
    if got.len() != len {
        return Some(format!("{what}: {} elements, expected {len}", got.len()));
    }
    got.iter()
        .enumerate()
        .find(|&(i, &x)| x.to_bits() != want(i).to_bits())
        .map(|(i, &x)| format!("{what}: element {i} is {x}, expected {}", want(i)))
}

/// Runs every collective on `count` f32 per rank and returns the first
/// wrong result this rank saw.
fn check_size(g: &Group, count: usize) -> anyhow::Result<Option<String>> {
    let (n, r) = (g.size(), g.rank());
    let mine: Vec<f32> = (0..count).map(|i| value(r, i)).collect();
    let reduced = |f: fn(f32, f32) -> f32, of: fn(usize, usize) -> f32| {
        move |i: usize| (1..n).fold(of(0, i), |acc, q| f(acc, of(q, i)))
    };
    let sum = reduced(|a, b| a + b, value);
    let mut problems = Vec::new();

    let mut buf = mine.clone();
    g.all_sum(&mut buf)?;
    problems.push(first_mismatch("all_sum", &buf, sum, count));

    let buf = g.all_sum_async(mine.clone()).wait()?;
    problems.push(first_mismatch("all_sum_async", &buf, sum, count));

    let mut buf = mine.clone();
    g.all_max(&mut buf)?;
    problems.push(first_mismatch(
        "all_max",
        &buf,
        reduced(f32::max, value),
        count,
    ));

    let mut buf = mine.clone();
    g.all_min(&mut buf)?;
    problems.push(first_mismatch(
        "all_min",
        &buf,
        reduced(f32::min, value),
        count,
    ));

    let mut buf: Vec<f32> = (0..count).map(|i| factor(r, i)).collect();
    g.all_prod(&mut buf)?;
    problems.push(first_mismatch(
        "all_prod",
        &buf,
        reduced(|a, b| a * b, factor),
        count,
    ));

    // all_gather and reduce_scatter: `count` is the whole buffer, split
    // unevenly when n does not divide it.
    let per_rank = (count / n).max(1);
    let mut gathered = vec![0f32; per_rank * n];
    g.all_gather(&mine[..per_rank], &mut gathered)?;
    let want = |i: usize| value(i / per_rank, i % per_rank);
    problems.push(first_mismatch("all_gather", &gathered, want, per_rank * n));

    let part = g.reduce_scatter_part(count, r);
    let mut out = vec![0f32; part.len()];
    g.reduce_scatter(&mine, &mut out, ReduceOp::Sum)?;
    let start = part.start;
    problems.push(first_mismatch(
        "reduce_scatter",
        &out,
        |i| sum(start + i),
        part.len(),
    ));

    // The last rank as root, so a broadcast that ignores its root fails.
    let root = n - 1;
    let mut buf = if r == root {
        mine.clone()
    } else {
        vec![0f32; count]
    };
    g.broadcast(&mut buf, root)?;
    problems.push(first_mismatch("broadcast", &buf, |i| value(root, i), count));

    if n >= 2 {
        let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
        let pending = g.send_async(mine.clone(), next);
        let mut got = vec![0f32; count];
        g.recv(&mut got, prev)?;
        pending.wait()?;
        problems.push(first_mismatch("send/recv", &got, |i| value(prev, i), count));
    }
    g.barrier()?;
    Ok(problems.into_iter().flatten().next())
}

/// Checks every size on every rank; fails on every rank if any rank saw a
/// wrong result (each rank names its own on stderr).
pub fn check(g: &Group, sizes: &[usize]) -> anyhow::Result<()> {
    let mut failed = false;
    for &size in sizes {
        let count = (size / 4).max(1);
        if let Some(problem) = check_size(g, count)? {
            eprintln!(
                "check failed on rank {}: {problem} ({} bytes)",
                g.rank(),
                count * 4
            );
            failed = true;
        }
    }
    let mut any = [u8::from(failed)];
    g.all_max(&mut any)?;
    if any[0] != 0 {
        bail!("a collective returned a wrong result (see the ranks' messages)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rank_group_checks_clean() {
        check(&Group::single(), &[4, 1000]).unwrap();
    }

    #[test]
    fn mismatch_names_the_element() {
        let got = [1.0, 2.0, 5.0];
        let msg = first_mismatch("all_sum", &got, |i| (i + 1) as f32, 3).unwrap();
        assert_eq!(msg, "all_sum: element 2 is 5, expected 3");
        assert!(first_mismatch("x", &got[..2], |i| (i + 1) as f32, 2).is_none());
        assert!(first_mismatch("x", &got[..2], |i| (i + 1) as f32, 3).is_some());
    }
}

//! Shared memory between ranks on one host: every collective and dtype
//! gives the same bits as over TCP (2, 3 and 4 ranks, odd lengths, and
//! groups that mix shared memory and TCP through `HUDDLE_SHM_HOST_KEY`);
//! a killed or stopped peer is reported by rank; nothing is left in
//! /dev/shm and no descriptor leaks; ranks that are threads of one process
//! share memory too.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{SCENARIO, env, finish, launch, run_ok, wait_for};
use huddle_comm::{CommError, Element, Group, GroupBuilder, Transport, bf16, f16};

// ---------------------------------------------------------------- worker

#[test]
fn rank_worker() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let result = match scenario.as_str() {
        "digest" => huddle_comm::init_strict().and_then(|g| digest(&g)),
        "loop" => huddle_comm::init_strict().and_then(|g| forever(&g)),
        "fds" => descriptors(),
        "send_to_gone" => huddle_comm::init_strict().and_then(|g| {
            // Rank 1 closes its group at once; rank 0 sends more than a
            // ring holds and must get an error, not wait for room forever.
            if g.rank() == 0 {
                g.send(&vec![1f32; 4 << 20], 1)
            } else {
                Ok(())
            }
        }),
        other => panic!("unknown scenario {other}"),
    };
    match result {
        Ok(()) => {
            println!("SCENARIO OK");
            std::process::exit(0)
        }
        Err(e) => {
            let kind = match &e {
                CommError::PeerLost { .. } => "PeerLost",
                CommError::Aborted { .. } => "Aborted",
                _ => "Other",
            };
            println!("ERROR[{kind}]: {e}");
            std::process::exit(3)
        }
    }
}

/// "TRANSPORTS 1=shm 2=tcp ..." as this rank sees its peers.
fn transports(g: &Group) -> String {
    let each: Vec<String> = (0..g.size())
        .filter_map(|m| g.transport(m).map(|t| format!("{m}={t}")))
        .collect();
    format!("TRANSPORTS {}", each.join(" "))
}

trait Sample: Element {
    fn sample(v: u64) -> Self;
}

macro_rules! sample {
    ($t:ty, $e:expr) => {
        impl Sample for $t {
            fn sample(v: u64) -> Self {
                let f: fn(u64) -> $t = $e;
                f(v)
            }
        }
    };
}

// Floats with many mantissa bits, so the order of summation shows.
sample!(f32, |v| (v % 1000) as f32 * 0.013 - 6.1);
sample!(f64, |v| (v % 1000) as f64 * 0.013_7 - 6.1);
sample!(f16, |v| f16::from_f32((v % 100) as f32 * 0.07 - 3.0));
sample!(bf16, |v| bf16::from_f32((v % 100) as f32 * 0.07 - 3.0));
sample!(i32, |v| (v % 7) as i32 - 3);
sample!(i64, |v| (v % 7) as i64 - 3);
sample!(u8, |v| (v % 3) as u8 + 1);

fn input<T: Sample>(rank: usize, len: usize, salt: u64) -> Vec<T> {
    (0..len as u64)
        .map(|i| {
            let z = (i + salt * 1_000_003 + rank as u64 * 7919).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            T::sample(z >> 33)
        })
        .collect()
}

/// FNV-1a over the raw bytes of `v`.
fn fold<T: Element>(h: &mut u64, v: &[T]) {
    // SAFETY: every Element is a plain number without padding.
    let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), size_of_val(v)) };
    for &b in bytes {
        *h = (*h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
}

fn digest_for<T: Sample>(g: &Group, h: &mut u64, lens: &[usize]) -> Result<(), CommError> {
    let (n, r) = (g.size(), g.rank());
    for (k, &len) in lens.iter().enumerate() {
        let salt = k as u64;
        for op in 0..4 {
            let mut buf = input::<T>(r, len, salt + op);
            match op {
                0 => g.all_sum(&mut buf)?,
                1 => g.all_max(&mut buf)?,
                2 => g.all_min(&mut buf)?,
                _ => g.all_prod(&mut buf)?,
            }
            fold(h, &buf);
        }
        let mine = input::<T>(r, len, salt + 5);
        let mut all = vec![T::sample(0); len * n];
        g.all_gather(&mine, &mut all)?;
        fold(h, &all);
        let whole = input::<T>(r, len * n + 1, salt + 6);
        let mut part = vec![T::sample(0); g.reduce_scatter_part(whole.len(), r).len()];
        g.reduce_scatter(&whole, &mut part, huddle_comm::ReduceOp::Sum)?;
        fold(h, &part);
        let mut b = input::<T>(r, len, salt + 7);
        g.broadcast(&mut b, (k + 1) % n)?;
        fold(h, &b);
        let out = input::<T>(r, len, salt + 8);
        let mut got = vec![T::sample(0); len];
        let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
        if r % 2 == 0 {
            g.send(&out, next)?;
            g.recv(&mut got, prev)?;
        } else {
            g.recv(&mut got, prev)?;
            g.send(&out, next)?;
        }
        fold(h, &got);
        g.barrier()?;
    }
    Ok(())
}

/// Prints this rank's transports and a digest of every collective over
/// every dtype; runs with and without shared memory must print the same.
fn digest(g: &Group) -> Result<(), CommError> {
    println!("{}", transports(g));
    let lens = [1, 3, 1001, 70_001];
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    // Larger than a ring (4 MiB), so frames wrap and stream.
    digest_for::<f32>(g, &mut h, &[1_300_001])?;
    digest_for::<f32>(g, &mut h, &lens)?;
    digest_for::<f64>(g, &mut h, &lens)?;
    digest_for::<f16>(g, &mut h, &lens)?;
    digest_for::<bf16>(g, &mut h, &lens)?;
    digest_for::<i32>(g, &mut h, &lens)?;
    digest_for::<i64>(g, &mut h, &lens)?;
    digest_for::<u8>(g, &mut h, &lens)?;
    // Async calls run on another thread of the same process.
    let p = g.all_sum_async(input::<f32>(g.rank(), 100_003, 99));
    let mut sync = input::<f64>(g.rank(), 5, 98);
    g.all_sum(&mut sync)?;
    fold(&mut h, &p.wait()?);
    fold(&mut h, &sync);
    println!("DIGEST {h:016x}");
    Ok(())
}

fn forever(g: &Group) -> Result<(), CommError> {
    let len: usize = std::env::var("HUDDLE_TEST_LEN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    println!("{}", transports(g));
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

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn maps_shm() -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|m| m.contains("memfd:huddle-shm"))
}

/// Two groups one after the other in one process: the second must leave
/// exactly as many descriptors open as the first did, and unmap its
/// segments.
fn descriptors() -> Result<(), CommError> {
    let mut counts = Vec::new();
    for round in 0..2 {
        let cfg = huddle_comm::config_from_env()?.ok_or(CommError::NotLaunched)?;
        let g = GroupBuilder::from_config(cfg).build()?;
        let shared = (0..g.size()).all(|m| m == g.rank() || g.transport(m) == Some(Transport::Shm));
        if !shared || !maps_shm() {
            return Err(CommError::InvalidArgument(format!(
                "round {round}: expected shared memory with every peer ({})",
                transports(&g)
            )));
        }
        let mut v = input::<f32>(g.rank(), 1 << 20, round);
        g.all_sum(&mut v)?;
        g.barrier()?;
        drop(g);
        if maps_shm() {
            return Err(CommError::InvalidArgument(format!(
                "round {round}: a segment is still mapped after the group closed"
            )));
        }
        counts.push(fd_count());
    }
    if counts[0] != counts[1] {
        return Err(CommError::InvalidArgument(format!(
            "descriptors leak: {} open after the first group, {} after the second",
            counts[0], counts[1]
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------- tests

fn dev_shm() -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.find(prefix).map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{out}"))
}

/// Runs "digest" and returns each rank's (transports, digest) lines.
fn digests(n: usize, extra: impl Fn(usize) -> Vec<(String, String)>) -> Vec<(String, String)> {
    let results = finish(launch("digest", n, extra), Duration::from_secs(240));
    results
        .iter()
        .enumerate()
        .map(|(r, (code, out))| {
            assert_eq!(*code, Some(0), "rank {r} of {n} failed:\n{out}");
            (
                line(out, "TRANSPORTS").to_string(),
                line(out, "DIGEST").to_string(),
            )
        })
        .collect()
}

fn all_shm(n: usize, r: usize) -> String {
    let each: Vec<String> = (0..n)
        .filter(|&m| m != r)
        .map(|m| format!("{m}=shm"))
        .collect();
    format!("TRANSPORTS {}", each.join(" "))
}

fn same_bits_as_tcp(n: usize, algo: &'static str) {
    let tuned = move |shm: &'static str| {
        move |_| {
            env(&[
                ("HUDDLE_SHM", shm),
                ("HUDDLE_ALGO", algo),
                ("HUDDLE_PIECE_BYTES", "65536"),
            ])
        }
    };
    let over_shm = digests(n, tuned("1"));
    let over_tcp = digests(n, tuned("0"));
    for r in 0..n {
        assert_eq!(over_shm[r].0, all_shm(n, r), "rank {r}");
        assert!(over_tcp[r].0.contains("=tcp") && !over_tcp[r].0.contains("=shm"));
        assert_eq!(over_shm[r].1, over_tcp[r].1, "rank {r}: shm and tcp differ");
    }
}

#[test]
fn every_op_and_dtype_gives_the_same_bits_as_tcp_with_two_ranks() {
    same_bits_as_tcp(2, "auto");
}

#[test]
fn every_op_and_dtype_gives_the_same_bits_as_tcp_with_three_ranks() {
    same_bits_as_tcp(3, "ring");
}

#[test]
fn every_op_and_dtype_gives_the_same_bits_as_tcp_with_four_ranks() {
    same_bits_as_tcp(4, "mesh");
}

#[test]
fn hosts_faked_by_key_mix_shm_and_tcp_in_one_group() {
    let keyed = |shm: &'static str| {
        move |r: usize| {
            env(&[
                ("HUDDLE_SHM", shm),
                (
                    "HUDDLE_SHM_HOST_KEY",
                    if r < 2 { "host-a" } else { "host-b" },
                ),
                ("HUDDLE_ALGO", "ring"),
                ("HUDDLE_PIECE_BYTES", "65536"),
            ])
        }
    };
    let mixed = digests(4, keyed("1"));
    let tcp = digests(4, keyed("0"));
    let want = [
        "TRANSPORTS 1=shm 2=tcp 3=tcp",
        "TRANSPORTS 0=shm 2=tcp 3=tcp",
        "TRANSPORTS 0=tcp 1=tcp 3=shm",
        "TRANSPORTS 0=tcp 1=tcp 2=shm",
    ];
    for r in 0..4 {
        assert_eq!(mixed[r].0, want[r], "rank {r}");
        assert_eq!(mixed[r].1, tcp[r].1, "rank {r}: mixed and tcp differ");
    }
}

#[test]
fn rank_0_decides_whether_memory_is_shared() {
    // Only rank 0 says no: everyone talks TCP.
    let d = digests(2, |r| {
        env(&[("HUDDLE_SHM", if r == 0 { "0" } else { "1" })])
    });
    assert_eq!(d[1].0, "TRANSPORTS 0=tcp");
}

#[test]
fn a_send_to_a_rank_that_left_is_an_error_naming_it() {
    let results = finish(
        launch("send_to_gone", 2, |_| Vec::new()),
        Duration::from_secs(60),
    );
    assert_eq!(results[1].0, Some(0), "{}", results[1].1);
    let (code, out) = &results[0];
    assert_eq!(*code, Some(3), "{out}");
    let err = line(out, "ERROR[");
    assert!(
        err.starts_with("ERROR[PeerLost]") && err.contains("rank 1"),
        "{err}"
    );
}

#[test]
fn groups_leave_no_descriptors_or_mappings_behind() {
    run_ok("fds", 3, |_| Vec::new());
}

/// Kills (or stops) rank 2 of 3 in a loop of all_sums of `len` floats:
/// the others report it by rank, and /dev/shm is as before.
fn lose_rank_2(signal: libc::c_int, len: &str, timeout: &str) {
    let before = dev_shm();
    let algo = if len == "4" { "mesh" } else { "ring" };
    let ranks = launch("loop", 3, |_| {
        env(&[
            ("HUDDLE_TEST_LEN", len),
            ("HUDDLE_PEER_TIMEOUT", timeout),
            ("HUDDLE_ALGO", algo),
        ])
    });
    wait_for(&ranks, "READY", Duration::from_secs(60));
    for (r, rank) in ranks.iter().enumerate() {
        let out = rank.out.lock().unwrap().clone();
        assert_eq!(line(&out, "TRANSPORTS"), all_shm(3, r), "rank {r}");
    }
    let pid2 = ranks[2].child.id() as libc::pid_t;
    // SAFETY: signalling a child process this test started.
    unsafe { libc::kill(pid2, signal) };
    let mut ranks = ranks;
    let mut lost = ranks.pop();
    let results = finish(ranks, Duration::from_secs(60));
    if let Some(r) = &mut lost {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    for (r, (code, out)) in results.iter().enumerate() {
        assert_eq!(*code, Some(3), "rank {r}: {out}");
        let err = line(out, "ERROR[");
        assert!(
            err.starts_with("ERROR[PeerLost]") && err.contains("rank 2"),
            "rank {r}: {err}"
        );
    }
    assert_eq!(dev_shm(), before, "entries appeared in /dev/shm");
}

#[test]
fn a_killed_rank_is_named_and_leaves_nothing_in_dev_shm() {
    lose_rank_2(libc::SIGKILL, "1000000", "30");
}

#[test]
fn a_killed_rank_is_named_by_ranks_waiting_on_tiny_messages() {
    lose_rank_2(libc::SIGKILL, "4", "30");
}

#[test]
fn a_stopped_rank_is_named_after_the_peer_timeout() {
    lose_rank_2(libc::SIGSTOP, "1000000", "1.5");
}

#[test]
fn a_stopped_rank_is_named_by_ranks_waiting_on_tiny_messages() {
    lose_rank_2(libc::SIGSTOP, "4", "1.5");
}

#[test]
fn ranks_that_are_threads_of_one_process_share_memory() {
    let port = common::free_port();
    let n = 3;
    let threads: Vec<_> = (0..n)
        .map(|r| {
            std::thread::spawn(move || -> Result<Vec<f32>, CommError> {
                let g = GroupBuilder::new(r, n, format!("127.0.0.1:{port}"), b"threads")
                    .join_timeout(Duration::from_secs(60))
                    .build()?;
                for m in (0..n).filter(|&m| m != r) {
                    assert_eq!(g.transport(m), Some(Transport::Shm), "rank {r} to {m}");
                }
                // Over 32 MiB: results are written with streaming stores.
                let mut v: Vec<f32> = (0..8_400_001).map(|i| (i % 17) as f32 + r as f32).collect();
                g.all_sum(&mut v)?;
                Ok(v)
            })
        })
        .collect();
    for t in threads {
        let v = t.join().unwrap().unwrap();
        for (i, x) in v.iter().enumerate() {
            assert_eq!(*x, 3.0 * (i % 17) as f32 + 3.0, "element {i}");
        }
    }
}

//! Every collective across 4 network-namespace hosts, launched over ssh:
//! `huddle bench comm --check` runs each one on rank- and element-dependent
//! values and compares every result exactly on every rank, for the ring and
//! the mesh, with one and with two ranks per host.
//!
//! Needs root, sshd and ip (scripts/testbed/cluster.sh); skipped otherwise,
//! with a message saying why.

mod support;

use support::{Outcome, run, scratch};

const HOSTS: usize = 4;

/// The collectives `--check` reports as verified.
const CHECKED: &str = "# check: all_sum, all_sum_async, all_max, all_min, all_prod, all_gather, \
                       reduce_scatter, broadcast, send/recv and barrier exact on";

fn bench_check(
    hostfile: &std::path::Path,
    ssh_config: &std::path::Path,
    per_host: usize,
    algo: &str,
) -> Outcome {
    let per_host = per_host.to_string();
    run(
        &[
            "launch",
            "--hostfile",
            hostfile.to_str().expect("utf-8 path"),
            "--ssh-config",
            ssh_config.to_str().expect("utf-8 path"),
            "--ranks-per-host",
            &per_host,
            "--",
            env!("CARGO_BIN_EXE_huddle"),
            "bench",
            "comm",
            "--check",
            "--algo",
            algo,
            // One element, a few, and an uneven ~1 MB that the ring cuts
            // into pieces and parts of different lengths.
            "--sizes",
            "4,28,1000012",
            "--ops",
            "all-sum",
            "--iters",
            "1",
            "--warmup",
            "0",
        ],
        b"",
    )
}

#[test]
fn every_collective_is_exact_across_four_hosts() {
    let Some(cluster) = support::testbed::cluster("the 4-host collective tests", HOSTS) else {
        return;
    };
    let dir = scratch("hosts-collectives");
    let hostfile = cluster.hostfile(&dir, HOSTS);
    for (per_host, algo) in [(1, "ring"), (1, "mesh"), (2, "auto")] {
        let out = bench_check(&hostfile, &cluster.ssh_config, per_host, algo);
        let what = format!("{per_host} rank(s) per host, {algo}");
        assert_eq!(out.code, Some(0), "{what}: {}", out.stderr);
        let ranks = HOSTS * per_host;
        let want = format!("[0 {}] {CHECKED} {ranks} ranks", cluster.hosts[0]);
        assert!(
            out.stdout.lines().any(|l| l == want),
            "{what}: no `{want}` in:\n{}",
            out.stdout
        );
    }
}

//! `huddle launch --hostfile`: real ssh into network-namespace hosts made by
//! scripts/testbed/cluster.sh (needs root, sshd and ip; skipped
//! otherwise, with a message saying why).
//!
//! One test function runs every scenario in turn: the hosts are global
//! machine state, shared by whoever brought them up. Jobs that end badly
//! (lost hosts and connections, killed ranks, a killed launcher) are in
//! launch_ssh_cleanup.rs.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::testbed::Cluster;
use support::{alive, finish, huddle, run, scratch, wait_for_pid, wait_gone};

struct Testbed {
    hostfile: PathBuf,
    _dir: support::Scratch,
    ssh_config: PathBuf,
    ips: Vec<String>,
    _cluster: Cluster,
}

fn testbed() -> Option<Testbed> {
    let cluster = support::testbed::cluster("the ssh launch tests", 3)?;
    let ips = cluster.hosts.clone();
    assert!(ips.len() >= 2, "testbed has fewer than 2 hosts");
    let dir = scratch("ssh-hostfile");
    let hostfile = cluster.hostfile(&dir, ips.len());
    Some(Testbed {
        hostfile,
        _dir: dir,
        ssh_config: cluster.ssh_config.clone(),
        ips,
        _cluster: cluster,
    })
}

impl Testbed {
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "launch",
            "--hostfile",
            self.hostfile.to_str().expect("utf-8 path"),
            "--ssh-config",
            self.ssh_config.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        args
    }

    fn n(&self) -> usize {
        self.ips.len()
    }
}

#[test]
fn ssh_launch_across_namespace_hosts() {
    let Some(tb) = testbed() else { return };
    ranks_are_placed_with_env_and_prefixes(&tb);
    token_never_shows_in_any_process_arguments(&tb);
    odd_arguments_arrive_intact_remotely(&tb);
    stdin_reaches_remote_rank_zero_only(&tb);
    binary_stdin_arrives_intact_remotely(&tb);
    remote_failure_is_named_and_stops_remote_ranks(&tb);
    sigint_reaches_remote_ranks(&tb);
    dry_run_hides_the_token(&tb);
}

fn ranks_are_placed_with_env_and_prefixes(tb: &Testbed) {
    let script = "echo $HUDDLE_RANK $HUDDLE_LOCAL_RANK $HUDDLE_LOCAL_SIZE $HUDDLE_WORLD_SIZE \
                  $(hostname) $HUDDLE_COORDINATOR; echo e$HUDDLE_RANK >&2";
    let out = run(
        &tb.args(&["--ranks-per-host", "2", "--", "sh", "-c", script]),
        b"",
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let world = 2 * tb.n();
    let mut seen = BTreeSet::new();
    for line in out.stdout.lines() {
        let (prefix, rest) = line.split_once("] ").expect("prefixed");
        let (rank, host) = prefix[1..].split_once(' ').expect("rank and host");
        let rank: usize = rank.parse().expect("rank number");
        let fields: Vec<&str> = rest.split(' ').collect();
        assert_eq!(host, tb.ips[rank / 2], "{line}");
        assert_eq!(fields[0], rank.to_string());
        assert_eq!(fields[1], (rank % 2).to_string());
        assert_eq!(fields[2], "2");
        assert_eq!(fields[3], world.to_string());
        assert_eq!(fields[4], format!("h{}", rank / 2), "hostname: {line}");
        let port = fields[5].strip_prefix(&format!("{}:", tb.ips[0]));
        assert!(port.is_some_and(|p| p.parse::<u16>().is_ok()), "{line}");
        seen.insert(rank);
    }
    assert_eq!(seen, (0..world).collect());
    // Only the ranks' own lines: a remote login shell may add its own
    // (this machine's ~/.bashrc runs `pyenv init`, whose rehash complains
    // when several sessions start at once).
    let own: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| {
            l.split_once("] ")
                .is_some_and(|(_, rest)| rest.starts_with('e'))
        })
        .collect();
    assert_eq!(own.len(), world, "{}", out.stderr);
    for rank in 0..world {
        let want = format!("] e{rank}");
        assert!(own.iter().any(|l| l.ends_with(&want)), "{}", out.stderr);
    }
}

fn token_never_shows_in_any_process_arguments(tb: &Testbed) {
    let dir = scratch("ssh-token");
    // printf is a builtin: writing the token to a file shows it nowhere.
    let script = format!(
        "printf '%s\\n' \"$HUDDLE_JOB_TOKEN\" > {d}/tok$HUDDLE_RANK; \
         cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -c -F -f {d}/tok$HUDDLE_RANK; true",
        d = dir.display()
    );
    let out = run(&tb.args(&["--", "sh", "-c", &script]), b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let counts: Vec<&str> = out
        .stdout
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(
        counts,
        vec!["0"; tb.n()],
        "token in a process listing: {}",
        out.stdout
    );
}

fn odd_arguments_arrive_intact_remotely(tb: &Testbed) {
    let dir = scratch("ssh-args");
    let odd = [
        "two words",
        "it's",
        "\"quoted\"",
        "$HOME",
        "; echo pwned",
        "line1\nline2",
        "",
        "*",
        "back\\slash",
        "`id`",
    ];
    let script = format!(
        "printf '%s\\0' \"$@\" > {}/args.$HUDDLE_RANK",
        dir.display()
    );
    let mut args = tb.args(&["--", "sh", "-c", &script, "sh"]);
    args.extend(odd);
    let out = run(&args, b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let want: Vec<&[u8]> = odd.iter().map(|s| s.as_bytes()).chain([&b""[..]]).collect();
    for rank in 0..tb.n() {
        let got = std::fs::read(dir.join(format!("args.{rank}"))).expect("args file");
        let got: Vec<&[u8]> = got.split(|&b| b == 0).collect();
        assert_eq!(got, want, "rank {rank}");
    }
}

fn stdin_reaches_remote_rank_zero_only(tb: &Testbed) {
    let script = r#"while IFS= read -r l; do echo "in:$l"; done; echo eof"#;
    let out = run(&tb.args(&["--", "sh", "-c", script]), b"hello\nworld\n");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut lines: Vec<String> = out
        .stdout
        .lines()
        .map(|l| {
            l.split_once(' ')
                .map(|(r, rest)| format!("{r}] {}", rest.split_once("] ").map_or("", |x| x.1)))
                .unwrap_or_default()
        })
        .collect();
    lines.sort();
    let mut want = vec![
        "[0] eof".to_owned(),
        "[0] in:hello".into(),
        "[0] in:world".into(),
    ];
    want.extend((1..tb.n()).map(|r| format!("[{r}] eof")));
    assert_eq!(lines, want, "{}", out.stdout);
}

fn binary_stdin_arrives_intact_remotely(tb: &Testbed) {
    // Every byte value, NULs and newlines included, across many frames.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let local = Command::new("sh")
        .args(["-c", "cksum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cksum");
    let want = finish(local, &data).stdout;
    let out = run(
        &tb.args(&["--", "sh", "-c", "[ $HUDDLE_RANK = 0 ] && cksum || true"]),
        &data,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let got = out.stdout.split_once("] ").map_or("", |(_, rest)| rest);
    assert_eq!(got, want);
}

/// A job whose ranks other than `failing` write their pid and sleep.
fn sleepers_script(dir: &Path, failing: Option<usize>) -> String {
    let fail = match failing {
        Some(rank) => format!(
            "if [ $HUDDLE_RANK = {rank} ]; then while [ ! -s {d}/0 ]; do sleep 0.05; done; exit 3; fi; ",
            d = dir.display()
        ),
        None => String::new(),
    };
    format!(
        "{fail}echo $$ > {d}/$HUDDLE_RANK; exec sleep 1000",
        d = dir.display()
    )
}

fn remote_failure_is_named_and_stops_remote_ranks(tb: &Testbed) {
    let dir = scratch("ssh-fail");
    let script = sleepers_script(&dir, Some(1));
    let out = run(&tb.args(&["--", "sh", "-c", &script]), b"");
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    let want = format!("huddle: rank 1 ({}) exited with status 3", tb.ips[1]);
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    wait_gone(wait_for_pid(&dir.join("0")));
}

fn start_remote_sleepers(
    tb: &Testbed,
    name: &str,
) -> (std::process::Child, Vec<libc::pid_t>, support::Scratch) {
    let dir = scratch(name);
    let script = sleepers_script(&dir, None);
    let child = huddle()
        .args(tb.args(&["--", "sh", "-c", &script]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start huddle");
    let pids = (0..tb.n())
        .map(|r| wait_for_pid(&dir.join(r.to_string())))
        .collect();
    (child, pids, dir)
}

fn sigint_reaches_remote_ranks(tb: &Testbed) {
    let (child, pids, _dir) = start_remote_sleepers(tb, "ssh-sigint");
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = finish(child, b"");
    assert_eq!(out.code, Some(130), "{}", out.stderr);
    for pid in pids {
        assert!(!alive(pid), "remote rank {pid} survived SIGINT");
    }
}

fn dry_run_hides_the_token(tb: &Testbed) {
    let out = run(&tb.args(&["--dry-run", "--", "echo", "hi"]), b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.matches("HUDDLE_JOB_TOKEN=<hidden>").count(),
        tb.n()
    );
    let hex_run = out
        .stdout
        .split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(hex_run < 32, "something token-like in the dry run");
    assert!(out.stdout.contains("BatchMode=yes"));
}

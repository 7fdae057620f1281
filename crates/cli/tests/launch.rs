//! `huddle launch -n N`: real processes, real signals.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;

use support::{alive, finish, huddle, run, scratch, wait_for_pid, wait_gone, wait_guarded};

fn sh(n: &str, script: &str) -> Vec<String> {
    ["launch", "-n", n, "--", "sh", "-c", script]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn run_sh(n: &str, script: &str, stdin: &[u8]) -> support::Outcome {
    let args = sh(n, script);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&args, stdin)
}

#[test]
fn all_ranks_succeeding_exits_zero() {
    let out = run_sh("3", "exit 0", b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stderr, "");
}

#[test]
fn failing_rank_is_named_and_stops_the_others() {
    let dir = scratch("fail");
    // Ranks 0 and 1 sleep; rank 2 fails once both have written their pid.
    let script = format!(
        r#"d={dir}
        if [ "$HUDDLE_RANK" = 2 ]; then
            while [ ! -s $d/0 ] || [ ! -s $d/1 ]; do sleep 0.02; done
            exit 3
        fi
        echo $$ > $d/$HUDDLE_RANK.tmp && mv $d/$HUDDLE_RANK.tmp $d/$HUDDLE_RANK
        sleep 1000
        echo finished"#,
        dir = dir.display()
    );
    let out = run_sh("3", &script, b"");
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    assert!(
        out.stderr.contains("huddle: rank 2 exited with status 3"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("finished"));
    for rank in ["0", "1"] {
        let pid = wait_for_pid(&dir.join(rank));
        assert!(!alive(pid), "rank {rank} (pid {pid}) survived");
    }
}

#[test]
fn rank_killed_by_signal_is_reported_with_the_signal() {
    let out = run_sh(
        "2",
        r#"[ "$HUDDLE_RANK" = 1 ] && kill -9 $$; sleep 1000"#,
        b"",
    );
    assert_eq!(out.code, Some(128 + 9), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("huddle: rank 1 killed by signal 9 (SIGKILL)"),
        "{}",
        out.stderr
    );
}

#[test]
fn every_line_of_every_rank_is_prefixed_and_whole() {
    // Lines longer than a pipe's atomic write, from 4 ranks at once.
    let script = r#"
        line=$(printf "%04000d" 0 | tr 0 "$HUDDLE_RANK")
        i=0
        while [ $i -lt 40 ]; do
            echo "$line$line"
            echo "err $HUDDLE_RANK $i" >&2
            i=$((i + 1))
        done
        printf "tail $HUDDLE_RANK""#;
    let out = run_sh("4", script, b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut counts = BTreeMap::new();
    for line in out.stdout.lines() {
        let (prefix, body) = line.split_at(4);
        let rank = prefix.as_bytes()[1] as char;
        assert_eq!(prefix, format!("[{rank}] "), "bad prefix in {line:.40}");
        if body.starts_with("tail") {
            assert_eq!(body, format!("tail {rank}"));
            continue;
        }
        assert_eq!(body.len(), 8000, "line cut or mixed: {line:.40}");
        assert!(body.chars().all(|c| c == rank), "line mixed: {line:.40}");
        *counts.entry(rank).or_insert(0) += 1;
    }
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [40; 4]);
    let err_lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(err_lines.len(), 160, "{}", out.stderr);
    for line in err_lines {
        let rank = &line[1..2];
        assert!(line.starts_with(&format!("[{rank}] err {rank} ")), "{line}");
    }
}

#[test]
fn partial_last_line_is_flushed() {
    let out = run_sh("1", "printf 'no newline'", b"");
    assert_eq!(out.stdout, "[0] no newline\n");
}

#[test]
fn stdin_reaches_rank_zero_only_and_ends() {
    let script = r#"while IFS= read -r l; do echo "in:$l"; done; echo eof"#;
    let out = run_sh("3", script, b"hello\nworld\n");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "[0] eof",
            "[0] in:hello",
            "[0] in:world",
            "[1] eof",
            "[2] eof"
        ]
    );
}

fn huddle_vars(stdout: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut by_rank: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in stdout.lines() {
        let (prefix, rest) = line.split_once("] ").expect("prefixed line");
        if let Some((k, v)) = rest.split_once('=') {
            by_rank
                .entry(prefix[1..].to_owned())
                .or_default()
                .insert(k.to_owned(), v.to_owned());
        }
    }
    by_rank
}

#[test]
fn each_rank_gets_its_own_contract_variables() {
    let script = "env | grep '^HUDDLE_'; \
                  tr '\\0' ' ' < /proc/$$/cmdline | grep -c \"$HUDDLE_JOB_TOKEN\"; \
                  tr '\\0' ' ' < /proc/$PPID/cmdline | grep -c \"$HUDDLE_JOB_TOKEN\"; true";
    let out = run_sh("3", script, b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        !out.stdout.lines().any(|l| l.ends_with("] 1")),
        "token in argv"
    );
    let vars = huddle_vars(&out.stdout);
    assert_eq!(vars.len(), 3);
    let tokens: BTreeSet<&str> = vars
        .values()
        .map(|v| v["HUDDLE_JOB_TOKEN"].as_str())
        .collect();
    let coordinators: BTreeSet<&str> = vars
        .values()
        .map(|v| v["HUDDLE_COORDINATOR"].as_str())
        .collect();
    assert_eq!(tokens.len(), 1);
    let token = tokens.first().unwrap();
    assert!(token.len() >= 32 && token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(coordinators.len(), 1);
    let coordinator = coordinators.first().unwrap();
    let port = coordinator
        .strip_prefix("127.0.0.1:")
        .expect("local coordinator");
    assert!(port.parse::<u16>().is_ok_and(|p| p > 0));
    for (rank, v) in &vars {
        assert_eq!(&v["HUDDLE_RANK"], rank);
        assert_eq!(&v["HUDDLE_LOCAL_RANK"], rank);
        assert_eq!(v["HUDDLE_WORLD_SIZE"], "3");
        assert_eq!(v["HUDDLE_LOCAL_SIZE"], "3");
    }
    let again = huddle_vars(&run_sh("1", "env | grep '^HUDDLE_'", b"").stdout);
    assert_ne!(again["0"]["HUDDLE_JOB_TOKEN"], *token, "token reused");
}

#[test]
fn port_option_sets_the_coordinator_port() {
    let out = run(
        &[
            "launch",
            "-n",
            "2",
            "--port",
            "45678",
            "--",
            "sh",
            "-c",
            "echo $HUDDLE_COORDINATOR",
        ],
        b"",
    );
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.ends_with("] 127.0.0.1:45678"))
            .count(),
        2
    );
}

#[test]
fn env_pairs_reach_every_rank() {
    let out = run(
        &[
            "launch",
            "-n",
            "2",
            "--env",
            "FOO=bar baz",
            "--env",
            "X=a=b",
            "--env",
            "EMPTY=",
            "--",
            "sh",
            "-c",
            "echo \"$FOO|$X|${EMPTY-unset}|\"",
        ],
        b"",
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort();
    assert_eq!(lines, ["[0] bar baz|a=b||", "[1] bar baz|a=b||"]);
}

#[test]
fn bad_env_names_are_refused_before_anything_starts() {
    for bad in ["1X=2", "NOVALUE", "HUDDLE_RANK=5"] {
        let out = run(
            &["launch", "-n", "1", "--env", bad, "--", "echo", "ran"],
            b"",
        );
        assert_eq!(out.code, Some(1), "{bad}");
        assert!(out.stderr.contains(bad), "{}", out.stderr);
        assert!(!out.stdout.contains("ran"));
    }
}

#[test]
fn command_not_found_is_a_clear_error() {
    let out = run(&["launch", "-n", "2", "--", "no-such-program-huddle"], b"");
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.stderr.trim(),
        "huddle: error: cannot start `no-such-program-huddle` for rank 0: \
         No such file or directory (os error 2)"
    );
}

#[test]
fn odd_arguments_arrive_intact() {
    let dir = scratch("args");
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
        "-n",
    ];
    let file = dir.join("args");
    let script = format!("printf '%s\\0' \"$@\" > {}.$HUDDLE_RANK", file.display());
    let mut args = vec!["launch", "-n", "2", "--", "sh", "-c", &script, "sh"];
    args.extend(odd);
    let out = run(&args, b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for rank in 0..2 {
        let got = std::fs::read(format!("{}.{rank}", file.display())).expect("args file");
        let got: Vec<&[u8]> = got.split(|&b| b == 0).collect();
        let want: Vec<&[u8]> = odd.iter().map(|s| s.as_bytes()).chain([&b""[..]]).collect();
        assert_eq!(got, want);
    }
}

/// Starts `huddle launch -n 3` whose ranks write their pid (and, when
/// `grandchild`, the pid of a background child) and then wait forever.
fn start_sleepers(
    name: &str,
    grandchild: bool,
) -> (std::process::Child, Vec<libc::pid_t>, support::Scratch) {
    let dir = scratch(name);
    let body = if grandchild {
        "sleep 1000 & echo $! > $d/g$HUDDLE_RANK; wait"
    } else {
        "exec sleep 1000"
    };
    let script = format!("d={}; echo $$ > $d/$HUDDLE_RANK; {body}", dir.display());
    let child = huddle()
        .args(sh("3", &script))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start huddle");
    let mut pids = Vec::new();
    for rank in 0..3 {
        pids.push(wait_for_pid(&dir.join(rank.to_string())));
        if grandchild {
            pids.push(wait_for_pid(&dir.join(format!("g{rank}"))));
        }
    }
    (child, pids, dir)
}

#[test]
fn sigint_to_the_launcher_stops_every_rank() {
    let (child, pids, _dir) = start_sleepers("sigint", false);
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = finish(child, b"");
    assert_eq!(out.code, Some(128 + 2), "{}", out.stderr);
    assert!(
        out.stderr.contains("killed by signal 2 (SIGINT)"),
        "{}",
        out.stderr
    );
    for pid in pids {
        assert!(!alive(pid), "rank pid {pid} survived SIGINT");
    }
}

#[test]
fn sigterm_to_the_launcher_stops_ranks_and_their_children() {
    let (child, pids, _dir) = start_sleepers("sigterm", true);
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = finish(child, b"");
    assert_ne!(out.code, Some(0));
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived SIGTERM");
    }
}

#[test]
fn sigkill_of_the_launcher_leaves_no_rank_alive() {
    let (mut child, pids, _dir) = start_sleepers("sigkill", true);
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = child.wait();
    for pid in pids {
        wait_gone(pid);
    }
}

#[test]
fn ranks_that_never_read_stdin_do_not_block_the_end() {
    // A rank that never reads stdin must not block the job's end.
    let big = vec![b'x'; 1 << 20];
    let out = run_sh("2", "exit 0", &big);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn hang_guard_helper_reports_exit_codes() {
    let child = huddle()
        .args(["launch", "-n", "1", "--", "sh", "-c", "exit 7"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start huddle");
    assert_eq!(wait_guarded(child), Some(7));
}

#[test]
fn rank_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dir = scratch("grace");
    let script = format!(
        r#"d={dir}
        if [ "$HUDDLE_RANK" = 0 ]; then
            while [ ! -s $d/1 ]; do sleep 0.02; done
            exit 4
        fi
        trap "" TERM
        echo $$ > $d/1.tmp && mv $d/1.tmp $d/1
        exec sleep 1000"#,
        dir = dir.display()
    );
    let args = [
        "launch", "-n", "2", "--grace", "0.2", "--", "sh", "-c", &script,
    ];
    let out = run(&args, b"");
    assert_eq!(out.code, Some(4), "{}", out.stderr);
    let pid = wait_for_pid(&dir.join("1"));
    assert!(!alive(pid), "rank 1 ignored SIGTERM and survived");
}

#[test]
fn cwd_option_sets_every_ranks_directory() {
    let dir = scratch("cwd");
    let path = dir.to_str().expect("utf-8 temp dir");
    let out = run(&["launch", "-n", "2", "--cwd", path, "--", "pwd"], b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let dirs: BTreeSet<&str> = out.stdout.lines().map(|l| &l[4..]).collect();
    assert_eq!(dirs, BTreeSet::from([path]));
}

#[test]
fn missing_placement_is_a_usage_error() {
    let out = run(&["launch", "--", "true"], b"");
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("-n N"), "{}", out.stderr);
}

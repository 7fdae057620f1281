//! Nothing of an ssh-launched job is left on any host when it ends badly: a
//! host whose sshd is down, a rank killed on its host, an ssh connection
//! lost at either end, the launcher itself SIGKILLed. Every scenario gives
//! its ranks a unique marker argument and then reads each test host's own
//! process table (its network namespace) until the marker is gone; the
//! launcher must say which rank failed, on which host, and why.
//!
//! Needs root, sshd and ip (scripts/testbed/cluster.sh); skipped otherwise,
//! with a message saying why. One test function runs every scenario in
//! turn: the hosts are machine-wide state.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use support::testbed::{Cluster, processes_on, wait_no_processes};
use support::{Outcome, Scratch, finish, huddle, run, scratch, wait_for_pid};

const HOSTS: usize = 4;

struct Testbed {
    cluster: Cluster,
    hostfile: PathBuf,
    _dir: Scratch,
}

fn testbed() -> Option<Testbed> {
    let cluster = support::testbed::cluster("the ssh cleanup tests", HOSTS)?;
    let dir = scratch("ssh-cleanup-hostfile");
    let hostfile = cluster.hostfile(&dir, HOSTS);
    Some(Testbed {
        cluster,
        hostfile,
        _dir: dir,
    })
}

/// One scenario's job: its marker and the directory where ranks leave
/// their pids.
struct Job {
    marker: String,
    pids: Scratch,
}

impl Job {
    fn new(name: &str) -> Job {
        Job {
            marker: format!("huddle-test-{}-{name}", std::process::id()),
            pids: scratch(&format!("cleanup-{name}")),
        }
    }

    /// Each rank writes its shell's pid and waits forever. The shell
    /// itself waits (no `exec sleep`), so the marker, its `$0`, stays in
    /// the command line of the rank's main process.
    fn command(&self) -> Vec<String> {
        let script = format!(
            "echo $$ > {d}/$HUDDLE_RANK.tmp && mv {d}/$HUDDLE_RANK.tmp {d}/$HUDDLE_RANK; \
             while :; do sleep 1; done",
            d = self.pids.display()
        );
        vec!["sh".into(), "-c".into(), script, self.marker.clone()]
    }

    fn rank_pid(&self, rank: usize) -> libc::pid_t {
        wait_for_pid(&self.pids.join(rank.to_string()))
    }
}

impl Testbed {
    fn args(&self, hostfile: &Path, ssh_config: &Path, job: &Job) -> Vec<String> {
        let mut args: Vec<String> = [
            "launch",
            "--hostfile",
            hostfile.to_str().expect("utf-8 path"),
            "--ssh-config",
            ssh_config.to_str().expect("utf-8 path"),
            "--",
        ]
        .map(String::from)
        .to_vec();
        args.extend(job.command());
        args
    }

    /// Starts `job` on every host and waits until every rank runs.
    fn start(&self, job: &Job) -> Child {
        let child = huddle()
            .args(self.args(&self.hostfile, &self.cluster.ssh_config, job))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start huddle");
        for rank in 0..HOSTS {
            job.rank_pid(rank);
        }
        child
    }

    fn ip(&self, rank: usize) -> &str {
        &self.cluster.hosts[rank]
    }
}

fn kill(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: signals a pid this test found running a process of its own job.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// The parent of `pid`, from /proc/PID/stat; None once it is gone.
fn parent_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn assert_failure(out: &Outcome, code: i32, message: &str) {
    assert_eq!(out.code, Some(code), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("huddle: {message}")),
        "wanted `{message}` in:\n{}",
        out.stderr
    );
}

#[test]
fn failed_ssh_jobs_leave_nothing_on_any_host() {
    let Some(tb) = testbed() else { return };
    host_with_sshd_down_is_named_and_nothing_is_left(&tb);
    rank_killed_on_its_host_is_named_with_its_signal(&tb);
    remote_end_of_a_lost_connection_stops_the_job(&tb);
    local_end_of_a_lost_connection_stops_the_job(&tb);
    sigkill_of_the_launcher_stops_every_remote_rank(&tb);
}

fn host_with_sshd_down_is_named_and_nothing_is_left(tb: &Testbed) {
    let job = Job::new("sshd-down");
    let dir = scratch("cleanup-sshd-down-config");
    // Host 2 by another name whose port has no sshd behind it. The
    // Include comes first: after a Host line it would apply to that host
    // only.
    let config = dir.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Include {}\nHost sshd-down\n  HostName {}\n  Port 2\n",
            tb.cluster.ssh_config.display(),
            tb.ip(2)
        ),
    )
    .expect("write ssh config");
    let entries: Vec<String> = (0..HOSTS)
        .map(|h| {
            let name = if h == 2 { "sshd-down" } else { tb.ip(h) };
            format!(r#"{{"ssh": "{name}", "ips": ["{}"]}}"#, tb.ip(h))
        })
        .collect();
    let hostfile = dir.join("hosts.json");
    std::fs::write(&hostfile, format!("[{}]", entries.join(", "))).expect("write hostfile");
    let args = tb.args(&hostfile, &config, &job);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), b"");
    assert_failure(
        &out,
        255,
        "rank 2 (sshd-down) lost its ssh session: ssh exited with status 255",
    );
    assert!(
        out.stderr.contains("[2 sshd-down] ssh: connect to host"),
        "ssh's own message is passed on: {}",
        out.stderr
    );
    wait_no_processes(HOSTS, &job.marker);
}

fn rank_killed_on_its_host_is_named_with_its_signal(tb: &Testbed) {
    let job = Job::new("rank-killed");
    let child = tb.start(&job);
    let victim = job.rank_pid(2);
    assert!(
        processes_on(2, &job.marker)
            .iter()
            .any(|(pid, _)| *pid == victim),
        "rank 2 runs on host 2"
    );
    kill(victim, libc::SIGKILL);
    let out = finish(child, b"");
    assert_failure(
        &out,
        137,
        &format!(
            "rank 2 ({}) was killed by signal 9 (SIGKILL) on its host (status 137)",
            tb.ip(2)
        ),
    );
    wait_no_processes(HOSTS, &job.marker);
}

/// The remote sshd process serving rank 1's session dies: its client sees
/// the connection drop, and rank 1's bootstrap sees its stdin end.
fn remote_end_of_a_lost_connection_stops_the_job(tb: &Testbed) {
    let job = Job::new("sshd-lost");
    let child = tb.start(&job);
    let on_host: Vec<libc::pid_t> = processes_on(1, &job.marker)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    // The bootstrap is the job's process whose parent is not the job's.
    let bootstrap = on_host
        .iter()
        .copied()
        .find(|&pid| parent_of(pid).is_some_and(|p| !on_host.contains(&p)))
        .expect("rank 1's bootstrap on host 1");
    let session = parent_of(bootstrap).expect("the bootstrap's parent");
    let name = std::fs::read_to_string(format!("/proc/{session}/cmdline")).unwrap_or_default();
    assert!(name.starts_with("sshd"), "bootstrap's parent is {name:?}");
    kill(session, libc::SIGKILL);
    let out = finish(child, b"");
    assert_failure(
        &out,
        255,
        &format!(
            "rank 1 ({}) lost its ssh session: ssh exited with status 255",
            tb.ip(1)
        ),
    );
    wait_no_processes(HOSTS, &job.marker);
}

/// Rank 1's ssh client here dies: the launcher names it, and the remote
/// rank stops when its session's connection closes.
fn local_end_of_a_lost_connection_stops_the_job(tb: &Testbed) {
    let job = Job::new("client-lost");
    let child = tb.start(&job);
    let launcher = child.id() as libc::pid_t;
    let client = std::fs::read_dir("/proc")
        .expect("list /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .find(|&pid| {
            let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv: Vec<&[u8]> = argv.split(|&b| b == 0).collect();
            parent_of(pid) == Some(launcher)
                && argv.first() == Some(&&b"ssh"[..])
                && argv.contains(&tb.ip(1).as_bytes())
        })
        .expect("the launcher's ssh client for rank 1");
    kill(client, libc::SIGKILL);
    let out = finish(child, b"");
    assert_failure(
        &out,
        137,
        &format!(
            "rank 1 ({}) lost its ssh session: the ssh client here was killed by signal 9 (SIGKILL)",
            tb.ip(1)
        ),
    );
    wait_no_processes(HOSTS, &job.marker);
}

fn sigkill_of_the_launcher_stops_every_remote_rank(tb: &Testbed) {
    let job = Job::new("launcher-killed");
    let mut child = tb.start(&job);
    for host in 0..HOSTS {
        assert!(
            !processes_on(host, &job.marker).is_empty(),
            "the job runs on host {host}"
        );
    }
    kill(child.id() as libc::pid_t, libc::SIGKILL);
    let _ = child.wait();
    wait_no_processes(HOSTS, &job.marker);
}

/// The launcher blocks the signals it reads from a signalfd; a rank, or a
/// remote rank's ssh client (started the same way), that inherited that
/// mask would ignore the SIGTERM meant to stop it. `cp` reports its own.
#[test]
fn ranks_start_with_no_signal_blocked() {
    let dir = scratch("cleanup-sigmask");
    let copy = dir.join("status");
    let out = run(
        &[
            "launch",
            "-n",
            "1",
            "--",
            "cp",
            "/proc/self/status",
            copy.to_str().expect("utf-8 path"),
        ],
        b"",
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let status = std::fs::read_to_string(&copy).expect("status copied");
    let blocked = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .map(str::trim);
    assert_eq!(blocked, Some("0000000000000000"), "{status}");
}

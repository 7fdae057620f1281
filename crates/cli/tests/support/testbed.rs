//! Network-namespace test hosts (scripts/testbed/cluster.sh), shared by the
//! tests that cross a network. The hosts are machine-wide state: a running
//! testbed is reused, and one we brought up is taken down when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{CLUSTER, cannot_run};

pub const TB: &str = "/tmp/testbed";

/// Hosts brought up when there are none: enough for every test, so a
/// 3-host test and a 4-host one share a testbed instead of replacing it.
const MIN_HOSTS: usize = 4;

pub struct Cluster {
    pub ssh_config: PathBuf,
    /// The `ssh` names (addresses) of hosts h0, h1, ... from hosts.json.
    pub hosts: Vec<String>,
    ours: bool,
}

impl Cluster {
    /// Writes an MLX hostfile of the first `n` hosts (one `ips` entry each,
    /// their testbed address) into `dir` and returns its path.
    pub fn hostfile(&self, dir: &Path, n: usize) -> PathBuf {
        let entries: Vec<String> = self
            .hosts
            .iter()
            .take(n)
            .map(|ip| format!(r#"{{"ssh": "{ip}", "ips": ["{ip}"]}}"#))
            .collect();
        let path = dir.join("hosts.json");
        std::fs::write(&path, format!("[{}]", entries.join(", "))).expect("write hostfile");
        path
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.ours {
            let _ = Command::new(CLUSTER)
                .arg("down")
                .env("TB", TB)
                .stdout(Stdio::null())
                .status();
        }
    }
}

fn why_not_runnable() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces need it)".into());
    }
    for tool in ["/usr/sbin/sshd", "/usr/sbin/ip", "/usr/bin/ssh", CLUSTER] {
        if !Path::new(tool).exists() {
            return Some(format!("{tool} is missing"));
        }
    }
    None
}

fn namespaces() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// At least `n` test hosts with sshd, or None (after `cannot_run`, which
/// fails under CI) when this machine cannot make them.
pub fn cluster(what: &str, n: usize) -> Option<Cluster> {
    if let Some(reason) = why_not_runnable() {
        cannot_run(what, &reason);
        return None;
    }
    let ssh_config = Path::new(TB).join("ssh/ssh_config");
    let hosts_json = Path::new(TB).join("hosts.json");
    let up = namespaces();
    // cluster.sh's switch namespace exists only while the hosts are up; a
    // testbed left by a run that was killed has namespaces but dead sshds.
    let sshd_alive = |i: usize| {
        std::fs::read_to_string(Path::new(TB).join(format!("state/sshd-h{i}.pid")))
            .ok()
            .and_then(|p| p.trim().parse::<libc::pid_t>().ok())
            .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0)
    };
    let hosts_up = (0..n).all(|i| up.iter().any(|ns| *ns == format!("h{i}")) && sshd_alive(i));
    let running =
        up.iter().any(|ns| ns == "tbsw") && ssh_config.exists() && hosts_json.exists() && hosts_up;
    let ours = !running;
    if ours {
        let testbed_ns = |ns: &String| {
            ns == "tbsw"
                || (ns.len() > 1
                    && ns.starts_with('h')
                    && ns[1..].bytes().all(|b| b.is_ascii_digit()))
        };
        if up.iter().any(testbed_ns) {
            // Stale or too small: clear it before making our own.
            let _ = Command::new(CLUSTER)
                .arg("down")
                .env("TB", TB)
                .stdout(Stdio::null())
                .status();
        }
        let status = Command::new(CLUSTER)
            .arg("up")
            .env("N", n.max(MIN_HOSTS).to_string())
            .env("TB", TB)
            .stdout(Stdio::null())
            .status()
            .expect("run cluster.sh");
        if !status.success() {
            cannot_run(what, &format!("cluster.sh up failed ({status})"));
            return None;
        }
    }
    let text = std::fs::read_to_string(&hosts_json).expect("testbed hosts.json");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&text).expect("hosts.json is JSON");
    let hosts = listed
        .iter()
        .take(n)
        .map(|h| h["ssh"].as_str().expect("ssh field").to_owned())
        .collect();
    Some(Cluster {
        ssh_config,
        hosts,
        ours,
    })
}

/// Processes inside test host `host`'s network namespace (h0, h1, ...)
/// whose command line contains `marker`, as (pid, command line). Reads the
/// namespace's own process list, so it sees what runs on that host only.
pub fn processes_on(host: usize, marker: &str) -> Vec<(libc::pid_t, String)> {
    let listed = Command::new("ip")
        .args(["netns", "pids", &format!("h{host}")])
        .output()
        .expect("run ip netns pids");
    String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
        .filter_map(|pid| {
            // Gone since the listing, or a zombie: empty command line.
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            line.contains(marker)
                .then(|| (pid, line.trim_end().to_owned()))
        })
        .collect()
}

/// Waits (hang-guarded) until no process with `marker` in its command
/// line runs on any of the first `hosts` test hosts.
pub fn wait_no_processes(hosts: usize, marker: &str) {
    let start = std::time::Instant::now();
    loop {
        let left: Vec<(usize, libc::pid_t, String)> = (0..hosts)
            .flat_map(|h| {
                processes_on(h, marker)
                    .into_iter()
                    .map(move |(pid, line)| (h, pid, line))
            })
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < super::HANG_GUARD,
            "still running on the test hosts: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

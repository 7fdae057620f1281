//! Network-namespace test hosts (scripts/testbed/cluster.sh), shared by the
//! tests that cross a network. The hosts are machine-wide state: a running
//! testbed is reused, and one we brought up is taken down when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{CLUSTER, cannot_run};

pub const TB: &str = "/tmp/testbed";

pub struct Cluster {
    pub ssh_config: PathBuf,
    /// The `ssh` names (addresses) of hosts h0, h1, ... from hosts.json.
    pub hosts: Vec<String>,
    ours: bool,
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
            .env("N", n.to_string())
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

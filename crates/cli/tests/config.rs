//! `huddle config` against network-namespace hosts made by
//! scripts/testbed/cluster.sh (needs root, sshd and ip; skipped
//! otherwise, with a message saying why).
//!
//! One test function runs every scenario in turn: the hosts are global
//! machine state, shared by whoever brought them up.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::testbed::Cluster;
use support::{Outcome, run, scratch};

const HOSTS: &str = "h0,h1,h2";

struct Testbed {
    ssh_config: PathBuf,
    _cluster: Cluster,
}

fn testbed() -> Option<Testbed> {
    let cluster = support::testbed::cluster("the huddle config tests", 3)?;
    Some(Testbed {
        ssh_config: cluster.ssh_config.clone(),
        _cluster: cluster,
    })
}

impl Testbed {
    fn config(&self, extra: &[&str]) -> Outcome {
        let mut args = vec![
            "config",
            "--hosts",
            HOSTS,
            "--ssh-config",
            self.ssh_config.to_str().expect("utf-8 path"),
            "--bulk-ms",
            "50",
        ];
        args.extend_from_slice(extra);
        run(&args, b"")
    }
}

fn ips(hostfile: &serde_json::Value, host: usize) -> Vec<String> {
    hostfile["hosts"][host]["ips"]
        .as_array()
        .expect("ips array")
        .iter()
        .map(|v| v.as_str().expect("ip string").to_owned())
        .collect()
}

#[test]
fn config_surveys_namespace_hosts() {
    let Some(tb) = testbed() else { return };
    hostfile_is_written_and_launch_uses_it(&tb);
    stdout_gets_the_hostfile_and_dot_the_graph(&tb);
    every_unreachable_host_is_named_in_one_error(&tb);
    missing_remote_huddle_is_named(&tb);
    auto_setup_addresses_an_unaddressed_link(&tb);
}

fn hostfile_is_written_and_launch_uses_it(tb: &Testbed) {
    let dir = scratch("config-hostfile");
    let path = dir.join("hosts.json");
    let out = tb.config(&[
        "--output",
        path.to_str().expect("utf-8 path"),
        "--backend",
        "ring",
        "--env",
        "GREETING=hi there",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(!dir.join("hosts.json.tmp").exists());
    let text = std::fs::read_to_string(&path).expect("hostfile written");
    let hf: serde_json::Value = serde_json::from_str(&text).expect("hostfile is JSON");
    assert_eq!(hf["backend"], "ring");
    assert_eq!(hf["envs"], serde_json::json!(["GREETING=hi there"]));
    for i in 0..3 {
        assert_eq!(hf["hosts"][i]["ssh"], format!("h{i}"));
        assert_eq!(hf["hosts"][i]["rdma"], serde_json::json!([]));
        assert_eq!(ips(&hf, i)[0], format!("10.77.0.{}", i + 1), "{text}");
    }
    // Measured links are reported, each with numbers.
    assert_eq!(out.stderr.matches(" Gbit/s, ").count(), 6, "{}", out.stderr);
    let launched = run(
        &[
            "launch",
            "--hostfile",
            path.to_str().expect("utf-8 path"),
            "--ssh-config",
            tb.ssh_config.to_str().expect("utf-8 path"),
            "--",
            "sh",
            "-c",
            "echo \"$(hostname) $GREETING\"",
        ],
        b"",
    );
    assert_eq!(launched.code, Some(0), "{}", launched.stderr);
    let mut lines: Vec<&str> = launched
        .stdout
        .lines()
        .map(|l| l.split_once("] ").map_or(l, |(_, rest)| rest))
        .collect();
    lines.sort();
    assert_eq!(lines, ["h0 hi there", "h1 hi there", "h2 hi there"]);
}

fn stdout_gets_the_hostfile_and_dot_the_graph(tb: &Testbed) {
    let dir = scratch("config-dot");
    let dot = dir.join("topology.dot");
    let out = tb.config(&["--dot", dot.to_str().expect("utf-8 path")]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let hf: serde_json::Value = serde_json::from_str(&out.stdout).expect("stdout is JSON");
    assert_eq!(hf["hosts"].as_array().map(Vec::len), Some(3));
    let graph = std::fs::read_to_string(&dot).expect("dot file written");
    assert!(graph.starts_with("digraph huddle {"), "{graph}");
    for (from, to) in [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)] {
        assert!(graph.contains(&format!("n{from} -> n{to} [")), "{graph}");
    }
    assert!(graph.contains("Gbit/s"), "{graph}");
    if Command::new("dot").arg("-V").output().is_ok() {
        let png = std::fs::read(dir.join("topology.dot.png")).expect("png written");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    }
}

fn every_unreachable_host_is_named_in_one_error(tb: &Testbed) {
    let dir = scratch("config-unreachable");
    // Nothing listens on port 2 of h1: a host whose sshd is down.
    let config = dir.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Include {}\nHost sshd-down\n  HostName 10.77.0.2\n  Port 2\n",
            tb.ssh_config.display()
        ),
    )
    .expect("write ssh config");
    let output = dir.join("hosts.json");
    let out = run(
        &[
            "config",
            "--hosts",
            "h0,sshd-down,h2,no-such-host.invalid",
            "--ssh-config",
            config.to_str().expect("utf-8 path"),
            "--output",
            output.to_str().expect("utf-8 path"),
        ],
        b"",
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].starts_with("huddle: error: cannot reach 2 of 4 hosts over ssh: sshd-down ("),
        "{}",
        out.stderr
    );
    assert!(lines[0].contains("Connection refused"), "{}", out.stderr);
    assert!(
        lines[0].contains("; no-such-host.invalid ("),
        "{}",
        out.stderr
    );
    assert!(!output.exists());
}

fn missing_remote_huddle_is_named(tb: &Testbed) {
    let out = tb.config(&["--remote-huddle", "/nonexistent/huddle"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.starts_with(
            "huddle: error: host h0: probe server: did not start \
             (is huddle at /nonexistent/huddle there?): "
        ),
        "{}",
        out.stderr
    );
}

/// A veth cable between h1 and h2, removed (both ends) when dropped.
struct Cable;

impl Cable {
    fn plug() -> Cable {
        // A cable left behind by an interrupted run.
        drop(Cable);
        ip(&[
            "link", "add", "cfgp1", "netns", "h1", "type", "veth", "peer", "name", "cfgp2",
            "netns", "h2",
        ]);
        ip(&["-n", "h1", "link", "set", "cfgp1", "up"]);
        ip(&["-n", "h2", "link", "set", "cfgp2", "up"]);
        wait_link_local("h1", "cfgp1");
        wait_link_local("h2", "cfgp2");
        Cable
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", "h1", "link", "del", "cfgp1"])
            .stderr(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Until duplicate address detection has finished with the fe80 address.
fn wait_link_local(ns: &str, dev: &str) {
    let start = Instant::now();
    loop {
        let text = ip(&["-n", ns, "-6", "addr", "show", "dev", dev]);
        if text.contains("fe80::") && !text.contains("tentative") {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{ns} {dev}: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ipv4_of(ns: &str, dev: &str) -> Option<String> {
    let text = ip(&["-n", ns, "-4", "-o", "addr", "show", "dev", dev]);
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    Some(word.split('/').next()?.to_owned())
}

fn auto_setup_addresses_an_unaddressed_link(tb: &Testbed) {
    let _cable = Cable::plug();
    let planned = tb.config(&[]);
    assert_eq!(planned.code, Some(0), "{}", planned.stderr);
    assert!(
        planned.stderr.contains("ssh h1 ip addr add 10.78."),
        "{}",
        planned.stderr
    );
    assert!(
        planned.stderr.contains("/30 dev cfgp1"),
        "{}",
        planned.stderr
    );
    assert!(
        planned.stderr.contains("/30 dev cfgp2"),
        "{}",
        planned.stderr
    );
    assert!(!planned.stdout.contains("10.78."), "{}", planned.stdout);
    assert_eq!(ipv4_of("h1", "cfgp1"), None, "planned only, not applied");

    let out = tb.config(&["--auto-setup"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let a = ipv4_of("h1", "cfgp1").expect("h1's end got an address");
    let b = ipv4_of("h2", "cfgp2").expect("h2's end got an address");
    assert!(
        a.starts_with("10.78.") && b.starts_with("10.78."),
        "{a} {b}"
    );
    let hf: serde_json::Value = serde_json::from_str(&out.stdout).expect("stdout is JSON");
    // The bridge address, which every host reaches, stays first.
    assert_eq!(ips(&hf, 1), ["10.77.0.2".to_owned(), a.clone()]);
    assert_eq!(ips(&hf, 2), ["10.77.0.3".to_owned(), b.clone()]);
    assert_eq!(ips(&hf, 0), ["10.77.0.1".to_owned()]);
    assert!(
        out.stderr.contains(&format!("h2 -> h1 at {a}: ")),
        "{}",
        out.stderr
    );
}

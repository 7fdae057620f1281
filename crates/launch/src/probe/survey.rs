//! The survey itself: facts from every host, probe servers on every host,
//! link discovery, optional address setup, then measurements.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::error::{ProbeError, Unreached};
use super::facts::{FACTS_SCRIPT, HostFacts};
use super::links::{AddressAssignment, P2pLink, cables_only, plan_addresses};
use super::order::{AddressStats, MeasuredLink, address_stats, build_hostfile};
use super::remote::Remote;
use super::wire::{ProbeTarget, TargetResult};
use crate::hostfile::Hostfile;

/// Only guards against a host that hangs; never a speed requirement.
const START_GUARD: Duration = Duration::from_secs(60);
const STOP_GUARD: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct SurveyOptions {
    pub remote: Remote,
    /// huddle's path on every host (the probe server and client).
    pub huddle: PathBuf,
    /// How long each bandwidth measurement sends.
    pub bulk: Duration,
    /// Give unaddressed point-to-point links addresses (else only plan them).
    pub auto_setup: bool,
}

#[derive(Debug, Clone)]
pub struct Survey {
    /// The hosts as given to ssh.
    pub names: Vec<String>,
    pub facts: Vec<HostFacts>,
    /// Cabled interface pairs that had no IPv4 address.
    pub p2p: Vec<P2pLink>,
    /// Addresses for `p2p`: added when `applied`, else only proposed.
    pub assignments: Vec<AddressAssignment>,
    pub applied: bool,
    pub links: Vec<MeasuredLink>,
    /// Per host, its reached addresses, best first.
    pub stats: Vec<Vec<AddressStats>>,
}

impl Survey {
    pub fn hostfile(&self) -> Hostfile {
        build_hostfile(&self.names, &self.stats)
    }
}

pub fn survey(names: &[String], opts: &SurveyOptions) -> Result<Survey, ProbeError> {
    let mut facts = gather_facts(names, &opts.remote)?;
    let run_id = format!("{:016x}", rand::random::<u64>());
    let ids: Vec<String> = (0..names.len()).map(|i| format!("{run_id}-{i}")).collect();
    let servers = ProbeServers::start(names, &ids, opts)?;
    let p2p = discover_p2p(names, &facts, &ids, &servers.ports, opts)?;
    let assignments = plan_addresses(&p2p, &facts)?;
    if opts.auto_setup && !assignments.is_empty() {
        apply(names, &assignments, &opts.remote)?;
        for a in &assignments {
            let host = &mut facts[a.host];
            if let Some(iface) = host.interfaces.iter_mut().find(|i| i.name == a.interface) {
                iface.ipv4.push(a.net);
            }
        }
    }
    let links = measure(names, &facts, &ids, &servers.ports, opts)?;
    drop(servers);
    let stats = address_stats(names.len(), &links);
    Ok(Survey {
        names: names.to_vec(),
        facts,
        p2p,
        applied: opts.auto_setup,
        assignments,
        links,
        stats,
    })
}

/// Every host at once; every one that fails is named in the one error.
fn gather_facts(names: &[String], remote: &Remote) -> Result<Vec<HostFacts>, ProbeError> {
    let outputs: Vec<Result<String, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| scope.spawn(move || remote.run_script(name, FACTS_SCRIPT)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("facts thread panicked".into()))
            })
            .collect()
    });
    let mut facts = Vec::new();
    let mut unreached = Vec::new();
    for (name, output) in names.iter().zip(outputs) {
        match output {
            Ok(text) => {
                facts.push(
                    HostFacts::parse(&text).map_err(|problem| ProbeError::Facts {
                        host: name.clone(),
                        problem,
                    })?,
                )
            }
            Err(reason) => unreached.push(Unreached {
                host: name.clone(),
                reason,
            }),
        }
    }
    if unreached.is_empty() {
        Ok(facts)
    } else {
        Err(ProbeError::Unreachable(unreached, names.len()))
    }
}

/// `huddle probe-serve` on every host, held by its ssh session: closing
/// the session's stdin stops it.
struct ProbeServers {
    sessions: Vec<(Child, Option<ChildStdin>)>,
    ports: Vec<u16>,
}

impl ProbeServers {
    fn start(names: &[String], ids: &[String], opts: &SurveyOptions) -> Result<Self, ProbeError> {
        let huddle = opts.huddle.as_os_str().as_encoded_bytes();
        let mut servers = ProbeServers {
            sessions: Vec::new(),
            ports: Vec::new(),
        };
        let mut announced = Vec::new();
        for (name, id) in names.iter().zip(ids) {
            let words: [&[u8]; 4] = [huddle, b"probe-serve", b"--id", id.as_bytes()];
            let mut child = opts
                .remote
                .command(name, &words)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(ProbeError::Ssh)?;
            announced.push(first_line(&mut child));
            let stdin = child.stdin.take();
            servers.sessions.push((child, stdin));
        }
        for ((name, rx), (child, _)) in names.iter().zip(announced).zip(&mut servers.sessions) {
            let line = rx.recv_timeout(START_GUARD).unwrap_or_default();
            match line.trim().strip_prefix("port ").map(str::parse::<u16>) {
                Some(Ok(port)) => servers.ports.push(port),
                _ => {
                    let _ = child.kill();
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = pipe.read_to_string(&mut stderr);
                    }
                    let said = stderr.lines().last().unwrap_or("").trim().to_owned();
                    return Err(ProbeError::Server {
                        host: name.clone(),
                        problem: format!(
                            "did not start (is huddle at {} there?): {}",
                            opts.huddle.display(),
                            if said.is_empty() { line.trim() } else { &said }
                        ),
                    });
                }
            }
        }
        Ok(servers)
    }
}

/// The child's first stdout line, read on a thread so a hung host cannot
/// block the caller past its guard.
fn first_line(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
    }
    rx
}

impl Drop for ProbeServers {
    fn drop(&mut self) {
        for (_, stdin) in &mut self.sessions {
            stdin.take();
        }
        let deadline = Instant::now() + STOP_GUARD;
        for (child, _) in &mut self.sessions {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Runs `huddle probe-client` on `host` and reads one result per target.
fn run_client(
    name: &str,
    targets: &[ProbeTarget],
    opts: &SurveyOptions,
    bulk: Option<Duration>,
) -> Result<Vec<TargetResult>, ProbeError> {
    let client_err = |problem: String| ProbeError::Client {
        host: name.to_owned(),
        problem,
    };
    let mut words: Vec<Vec<u8>> = vec![
        opts.huddle.as_os_str().as_encoded_bytes().to_vec(),
        b"probe-client".to_vec(),
    ];
    match bulk {
        Some(d) => words.extend([
            b"--bulk-ms".to_vec(),
            d.as_millis().to_string().into_bytes(),
        ]),
        None => words.push(b"--reach-only".to_vec()),
    }
    words.push(b"--".to_vec());
    words.extend(targets.iter().map(|t| t.to_arg().into_bytes()));
    let refs: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
    let output = opts
        .remote
        .command(name, &refs)
        .stdin(Stdio::null())
        .output()
        .map_err(ProbeError::Ssh)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(client_err(
            stderr.lines().last().unwrap_or("failed").trim().to_owned(),
        ));
    }
    let results: Vec<TargetResult> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| client_err(format!("unreadable result: {e}")))?;
    if results.len() != targets.len() {
        return Err(client_err(format!(
            "{} results for {} targets",
            results.len(),
            targets.len()
        )));
    }
    Ok(results)
}

/// Which unaddressed interfaces are cabled together: each host dials the
/// IPv6 link-local addresses of the others' through each of its own.
/// (No probe server answering there means no link, not an error.)
fn discover_p2p(
    names: &[String],
    facts: &[HostFacts],
    ids: &[String],
    ports: &[u16],
    opts: &SurveyOptions,
) -> Result<Vec<P2pLink>, ProbeError> {
    let mut plans: Vec<(usize, Vec<ProbeTarget>, Vec<P2pLink>)> = Vec::new();
    for (a, fa) in facts.iter().enumerate() {
        let mut targets = Vec::new();
        let mut meaning = Vec::new();
        for a_if in fa.unaddressed() {
            for (b, fb) in facts.iter().enumerate().filter(|(b, _)| *b != a) {
                for b_if in fb.unaddressed() {
                    for ll in &b_if.link_local6 {
                        targets.push(ProbeTarget {
                            id: ids[b].clone(),
                            addr: format!("{ll}%{}", a_if.name),
                            port: ports[b],
                        });
                        meaning.push(P2pLink {
                            a,
                            a_if: a_if.name.clone(),
                            b,
                            b_if: b_if.name.clone(),
                        });
                    }
                }
            }
        }
        if !targets.is_empty() {
            plans.push((a, targets, meaning));
        }
    }
    let results: Vec<Result<Vec<TargetResult>, ProbeError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = plans
            .iter()
            .map(|(a, targets, _)| scope.spawn(move || run_client(&names[*a], targets, opts, None)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ProbeError::Client {
                        host: String::new(),
                        problem: "discovery thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut found = Vec::new();
    for ((_, _, meaning), results) in plans.iter().zip(results) {
        for (link, result) in meaning.iter().zip(results?) {
            if result.measured.is_some() {
                // One entry per cable, whichever end dialled.
                let link = if link.a < link.b {
                    link.clone()
                } else {
                    P2pLink {
                        a: link.b,
                        a_if: link.b_if.clone(),
                        b: link.a,
                        b_if: link.a_if.clone(),
                    }
                };
                if !found.contains(&link) {
                    found.push(link);
                }
            }
        }
    }
    found.sort();
    Ok(cables_only(found))
}

/// `ip addr add` on each host, all of one host's in one ssh.
fn apply(
    names: &[String],
    assignments: &[AddressAssignment],
    remote: &Remote,
) -> Result<(), ProbeError> {
    for (host, name) in names.iter().enumerate() {
        let commands: Vec<String> = assignments
            .iter()
            .filter(|a| a.host == host)
            .map(AddressAssignment::command)
            .collect();
        if commands.is_empty() {
            continue;
        }
        let script = commands.join(" && ");
        remote
            .run_script(name, &script)
            .map_err(|problem| ProbeError::Setup {
                host: name.clone(),
                command: script.clone(),
                problem,
            })?;
    }
    Ok(())
}

/// Each host in turn measures every IPv4 address of every other host.
fn measure(
    names: &[String],
    facts: &[HostFacts],
    ids: &[String],
    ports: &[u16],
    opts: &SurveyOptions,
) -> Result<Vec<MeasuredLink>, ProbeError> {
    let mut links = Vec::new();
    for (from, name) in names.iter().enumerate() {
        let mut targets = Vec::new();
        let mut meaning = Vec::new();
        for (to, f) in facts.iter().enumerate().filter(|(to, _)| *to != from) {
            for addr in f.reachable_ipv4() {
                targets.push(ProbeTarget {
                    id: ids[to].clone(),
                    addr: addr.to_string(),
                    port: ports[to],
                });
                meaning.push((to, addr));
            }
        }
        if targets.is_empty() {
            continue;
        }
        let results = run_client(name, &targets, opts, Some(opts.bulk))?;
        for ((to, addr), result) in meaning.into_iter().zip(results) {
            match result.measured {
                Some(measured) => links.push(MeasuredLink {
                    from,
                    to,
                    addr,
                    measured,
                }),
                None => tracing::info!(
                    "{name} does not reach {} at {addr}: {}",
                    names[to],
                    result.error.unwrap_or_default()
                ),
            }
        }
    }
    Ok(links)
}

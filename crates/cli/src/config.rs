//! `huddle config`: survey the hosts, write the hostfile, show the links.
//! Also the two hidden helpers it runs on every host over ssh.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use huddle_launch::probe::{ProbeTarget, Remote, Survey, SurveyOptions, probe_all, render_dot};
use huddle_launch::{EnvPair, Hostfile};

#[derive(Args, Debug)]
#[command(
    after_help = "Every host must be reachable over ssh without a password, with huddle \
at the same path as here (or --remote-huddle). The hostfile lists, for each host, the \
addresses the other hosts reached, those all of them reach first, then by measured \
bandwidth and round trip."
)]
pub struct ConfigArgs {
    /// Hosts to survey, comma-separated, as given to ssh.
    #[arg(long, value_name = "HOST,HOST,...")]
    hosts: String,
    /// Where to write the hostfile (default: stdout).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The hostfile's "backend" (MLX's name for the collective backend).
    #[arg(long, value_parser = ["ring", "mesh"])]
    backend: Option<String>,
    /// Environment for every rank, kept in the hostfile (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<OsString>,
    /// Give point-to-point links that have no IPv4 address a /30 pair
    /// (`ip addr add` over ssh; needs root there). Without it, the
    /// commands are only printed.
    #[arg(long)]
    auto_setup: bool,
    /// Write the measured topology as a Graphviz file (and FILE.png when
    /// `dot` is installed).
    #[arg(long, value_name = "FILE")]
    dot: Option<PathBuf>,
    /// ssh configuration file (ssh -F).
    #[arg(long, value_name = "FILE")]
    ssh_config: Option<PathBuf>,
    /// huddle's path on the hosts (default: this program's path).
    #[arg(long, value_name = "PATH")]
    remote_huddle: Option<PathBuf>,
    /// Milliseconds each bandwidth measurement sends.
    #[arg(long, value_name = "MS", default_value_t = 300)]
    bulk_ms: u64,
}

pub fn run(args: ConfigArgs) -> anyhow::Result<i32> {
    let names: Vec<String> = Hostfile::from_host_list(&args.hosts)?
        .hosts
        .into_iter()
        .map(|h| h.ssh)
        .collect();
    let envs = args
        .env
        .iter()
        .map(|pair| EnvPair::parse(pair))
        .collect::<Result<Vec<_>, _>>()?;
    let huddle = match args.remote_huddle {
        Some(path) => path,
        None => std::env::current_exe().context("finding this program's path")?,
    };
    let opts = SurveyOptions {
        remote: Remote {
            ssh_config: args.ssh_config,
        },
        huddle,
        bulk: Duration::from_millis(args.bulk_ms),
        auto_setup: args.auto_setup,
    };
    let survey = huddle_launch::probe::survey(&names, &opts)?;
    print_summary(&survey);
    let mut hostfile = survey.hostfile();
    hostfile.backend = args.backend;
    hostfile.envs = envs;
    let alone = hostfile.hosts.len() == 1;
    if let Some(host) = hostfile.hosts.iter().find(|h| h.ips.is_empty() && !alone) {
        eprintln!(
            "huddle: warning: no other host reached {} at any address",
            host.ssh
        );
    }
    match &args.output {
        Some(path) => {
            hostfile.save(path)?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{}", hostfile.to_json()),
    }
    if let Some(path) = &args.dot {
        write_dot(path, &survey)?;
    }
    Ok(0)
}

fn print_summary(survey: &Survey) {
    for (name, f) in survey.names.iter().zip(&survey.facts) {
        let gpus: Vec<String> = f.gpus.iter().map(|g| g.name.clone()).collect();
        eprintln!(
            "{name}: {} ({} cores, {:.1} GiB{}{})",
            f.hostname,
            f.cores,
            f.mem_bytes as f64 / f64::from(1u32 << 30),
            if gpus.is_empty() { "" } else { ", " },
            gpus.join(", ")
        );
    }
    for link in &survey.links {
        eprintln!(
            "  {} -> {} at {}: {:.2} Gbit/s, {:.0} us round trip",
            survey.names[link.from],
            survey.names[link.to],
            link.addr,
            link.measured.gbps,
            link.measured.rtt_us
        );
    }
    if !survey.applied && !survey.assignments.is_empty() {
        eprintln!(
            "point-to-point links without addresses; to give them some, run \
             (or pass --auto-setup):"
        );
        for a in &survey.assignments {
            eprintln!("  ssh {} {}", survey.names[a.host], a.command());
        }
    }
}

fn write_dot(path: &Path, survey: &Survey) -> anyhow::Result<()> {
    let text = render_dot(&survey.names, &survey.facts, &survey.links);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    let mut png = path.as_os_str().to_owned();
    png.push(".png");
    match Command::new("dot")
        .arg("-Tpng")
        .arg(path)
        .arg("-o")
        .arg(&png)
        .status()
    {
        Ok(status) if status.success() => {
            eprintln!("wrote {} and {}", path.display(), Path::new(&png).display())
        }
        Ok(status) => bail!("dot -Tpng {} failed ({status})", path.display()),
        Err(_) => eprintln!(
            "wrote {} (install graphviz for a picture: dot -Tpng)",
            path.display()
        ),
    }
    Ok(())
}

/// `huddle probe-serve`: runs on each host during `huddle config`.
#[derive(Args, Debug)]
pub struct ProbeServeArgs {
    /// The host id to greet probes with.
    #[arg(long)]
    id: String,
}

pub fn serve(args: ProbeServeArgs) -> anyhow::Result<i32> {
    let announce = |port: u16| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "port {port}")?;
        out.flush()
    };
    // Our stdin is the controller's ssh session: EOF means it is done.
    let wait_for_eof = || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    };
    huddle_launch::probe::serve_probe(&args.id, announce, wait_for_eof).context("probe server")?;
    Ok(0)
}

/// `huddle probe-client`: runs on each host during `huddle config`.
#[derive(Args, Debug)]
pub struct ProbeClientArgs {
    /// Only check which targets answer.
    #[arg(long, conflicts_with = "bulk_ms")]
    reach_only: bool,
    /// Milliseconds each bandwidth measurement sends.
    #[arg(long, value_name = "MS", default_value_t = 300)]
    bulk_ms: u64,
    /// ID,ADDRESS,PORT of each probe server to dial.
    #[arg(last = true)]
    targets: Vec<String>,
}

pub fn client(args: ProbeClientArgs) -> anyhow::Result<i32> {
    let targets = args
        .targets
        .iter()
        .map(|t| ProbeTarget::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let bulk = (!args.reach_only).then(|| Duration::from_millis(args.bulk_ms));
    let results = probe_all(&targets, Duration::from_secs(2), bulk);
    let mut out = std::io::stdout().lock();
    for result in results {
        writeln!(out, "{}", serde_json::to_string(&result)?)?;
    }
    Ok(0)
}

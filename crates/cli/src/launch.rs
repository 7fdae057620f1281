//! `huddle launch`: parse, build the job, report how it ended.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use huddle_launch::{
    EnvPair, Hostfile, JobReport, LocalJob, SshJob, SuperviseOptions, describe, quote_words,
};

#[derive(Args, Debug)]
#[command(
    after_help = "Each rank gets HUDDLE_RANK, HUDDLE_WORLD_SIZE, HUDDLE_LOCAL_RANK, \
HUDDLE_LOCAL_SIZE, HUDDLE_COORDINATOR and HUDDLE_JOB_TOKEN. Output lines are prefixed \
with the rank; stdin goes to rank 0. If a rank fails, the others are stopped and huddle \
exits with that rank's status."
)]
pub struct LaunchArgs {
    /// Number of ranks to run on this machine.
    #[arg(short = 'n', long = "num-ranks", value_name = "N", conflicts_with_all = ["hostfile", "hosts"])]
    num_ranks: Option<usize>,
    /// MLX-style JSON hostfile: one rank per host (see --ranks-per-host), over ssh.
    #[arg(long, value_name = "FILE", conflicts_with = "hosts")]
    hostfile: Option<PathBuf>,
    /// Hosts to ssh to, comma-separated (a shorthand for a hostfile).
    #[arg(long, value_name = "HOST,HOST,...")]
    hosts: Option<String>,
    /// Ranks on each host of the hostfile.
    #[arg(long, value_name = "K", default_value_t = 1)]
    ranks_per_host: usize,
    /// ssh configuration file (ssh -F).
    #[arg(long, value_name = "FILE")]
    ssh_config: Option<PathBuf>,
    /// Extra environment for every rank (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<OsString>,
    /// Working directory of every rank (over ssh, default: this one).
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Port rank 0 listens on (default: a free one here, a random one over ssh).
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// Seconds between SIGTERM and SIGKILL when stopping ranks.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    grace: f64,
    /// Print what would run (the job token hidden) and exit.
    #[arg(long)]
    dry_run: bool,
    /// The program each rank runs, and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

pub fn run(args: LaunchArgs) -> anyhow::Result<i32> {
    let env = args
        .env
        .iter()
        .map(|pair| EnvPair::parse(pair))
        .collect::<Result<Vec<_>, _>>()?;
    let grace = Duration::try_from_secs_f64(args.grace)
        .with_context(|| format!("invalid --grace {}", args.grace))?;
    let options = SuperviseOptions { grace };
    let hostfile = match (&args.hostfile, &args.hosts) {
        (Some(path), _) => Some(Hostfile::load(path)?),
        (None, Some(list)) => Some(Hostfile::from_host_list(list)?),
        (None, None) => None,
    };
    let report = match (hostfile, args.num_ranks) {
        (Some(hostfile), _) => {
            let cwd = match args.cwd {
                Some(dir) => dir,
                None => std::env::current_dir().context("reading the current directory")?,
            };
            let job = SshJob {
                hostfile,
                ranks_per_host: args.ranks_per_host,
                command: args.command,
                env,
                cwd: Some(cwd),
                port: args.port,
                ssh_config: args.ssh_config,
                options,
            };
            if args.dry_run {
                print!("{}", describe(&job.plan()?, "<hidden>"));
                return Ok(0);
            }
            job.run()?
        }
        (None, Some(ranks)) => {
            let job = LocalJob {
                ranks,
                command: args.command,
                env,
                port: args.port,
                cwd: args.cwd,
                hostfile: None,
                options,
            };
            if args.dry_run {
                print_local_plan(&job)?;
                return Ok(0);
            }
            job.run()?
        }
        (None, None) => {
            bail!("say where to run: -n N (this machine), --hostfile FILE or --hosts a,b")
        }
    };
    Ok(report_end(&report))
}

fn print_local_plan(job: &LocalJob) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    for process in job.processes()? {
        let mut words: Vec<&[u8]> = Vec::new();
        let vars: Vec<Vec<u8>> = process
            .command
            .get_envs()
            .filter_map(|(k, v)| Some((k, v?)))
            .map(|(k, v)| {
                let shown = if k == huddle_launch::JOB_TOKEN {
                    "<hidden>".as_ref()
                } else {
                    v
                };
                [k.as_bytes(), b"=", shown.as_bytes()].concat()
            })
            .collect();
        words.extend(vars.iter().map(Vec::as_slice));
        words.push(process.command.get_program().as_bytes());
        words.extend(process.command.get_args().map(|a| a.as_bytes()));
        println!("# rank {}", process.rank);
        println!("{}", String::from_utf8_lossy(&quote_words(words)));
    }
    Ok(())
}

fn report_end(report: &JobReport) -> i32 {
    if let Some(failure) = &report.failure {
        eprintln!("huddle: {failure}");
        if failure.host.is_some() && failure.exit == huddle_launch::RankExit::Status(255) {
            eprintln!("huddle: status 255 usually means ssh itself failed: try `ssh HOST true`");
        }
    }
    report.exit_code()
}

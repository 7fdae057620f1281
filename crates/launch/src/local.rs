//! `huddle launch -n N`: every rank on this machine.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use crate::LaunchError;
use crate::env::{self, EnvPair, JobEnv, JobToken, Placement};
use crate::report::JobReport;
use crate::spawn::RankProcess;
use crate::stdin::StdinPlan;
use crate::supervise::{SuperviseOptions, supervise};

/// A job of `ranks` processes on this machine.
#[derive(Debug, Clone)]
pub struct LocalJob {
    pub ranks: usize,
    /// Program and arguments, passed to exec as they are (no shell).
    pub command: Vec<OsString>,
    pub env: Vec<EnvPair>,
    /// Coordinator port; a free one is picked when `None`.
    pub port: Option<u16>,
    pub cwd: Option<PathBuf>,
    pub hostfile: Option<PathBuf>,
    pub options: SuperviseOptions,
}

impl LocalJob {
    /// The processes to start, with a fresh token and coordinator address.
    pub fn processes(&self) -> Result<Vec<RankProcess>, LaunchError> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or(LaunchError::EmptyCommand)?;
        if self.ranks == 0 {
            return Err(LaunchError::NoRanks);
        }
        let port = match self.port {
            Some(port) => port,
            None => free_port("127.0.0.1")?,
        };
        let job_env = JobEnv {
            world_size: self.ranks,
            coordinator: format!("127.0.0.1:{port}"),
            token: JobToken::generate(),
            hostfile: self.hostfile.clone(),
            extra: self.env.clone(),
        };
        let processes = (0..self.ranks).map(|rank| {
            let mut command = Command::new(program);
            command.args(args);
            if let Some(dir) = &self.cwd {
                command.current_dir(dir);
            }
            // A launcher started inside another job must not pass that
            // job's optional variables on.
            command.env_remove(env::HOSTFILE);
            command.envs(job_env.for_rank(Placement {
                rank,
                local_rank: rank,
                local_size: self.ranks,
            }));
            RankProcess {
                rank,
                host: None,
                command,
                stdin: if rank == 0 {
                    StdinPlan::Forward
                } else {
                    StdinPlan::Null
                },
            }
        });
        Ok(processes.collect())
    }

    /// Runs the job to its end.
    pub fn run(&self) -> Result<JobReport, LaunchError> {
        supervise(self.processes()?, &self.options)
    }
}

/// A port nothing listens on right now. Another process could take it
/// before rank 0 binds it; `--port` is the way out if that ever happens.
pub fn free_port(host: &str) -> Result<u16, LaunchError> {
    TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|cause| LaunchError::NoFreePort {
            host: host.to_owned(),
            cause,
        })
}

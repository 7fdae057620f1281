//! Starting one rank's process so that it can always be stopped: its own
//! process group (it and everything it starts get one signal), and death
//! with the launcher.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use crate::LaunchError;
use crate::stdin::{StdinPlan, set_nonblocking};

/// One rank's process as the launcher will start it: the program itself
/// for a local rank, the ssh client for a remote one.
#[derive(Debug)]
pub struct RankProcess {
    pub rank: usize,
    /// The host it runs on, shown in its output prefix; `None` for local.
    pub host: Option<String>,
    pub command: Command,
    pub stdin: StdinPlan,
}

impl RankProcess {
    pub(crate) fn prefix(&self) -> String {
        match &self.host {
            Some(host) => format!("[{} {}] ", self.rank, host),
            None => format!("[{}] ", self.rank),
        }
    }
}

pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) stdin: Option<OwnedFd>,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

pub(crate) fn spawn_rank(process: &mut RankProcess) -> Result<Spawned, LaunchError> {
    let launcher = std::process::id() as libc::pid_t;
    let stdin = match process.stdin {
        StdinPlan::Null => Stdio::null(),
        _ => Stdio::piped(),
    };
    process
        .command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: the closure makes only async-signal-safe calls (sigprocmask,
    // prctl, getppid) on stack values and allocates nothing.
    unsafe {
        process.command.pre_exec(move || {
            // The launcher blocks the signals it reads through its signalfd,
            // and std's spawn passes the mask on: a rank (or its ssh client)
            // would then ignore the SIGTERM that stops it and linger until
            // the SIGKILL after the grace period.
            let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(none.as_mut_ptr());
            if libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Ranks begin with SIGINT's default action even when the
            // launcher inherited "ignore" (a shell's background job): the
            // SIGINT it forwards must stop them.
            if libc::signal(libc::SIGINT, libc::SIG_DFL) == libc::SIG_ERR {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The launcher may have died before prctl took effect; then no
            // signal will ever come, so do not start at all.
            if libc::getppid() != launcher {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let mut child = process
        .command
        .spawn()
        .map_err(|cause| LaunchError::Spawn {
            rank: process.rank,
            program: process.command.get_program().to_string_lossy().into_owned(),
            cause,
        })?;
    let stdin = child.stdin.take().map(OwnedFd::from);
    let pipes = child.stdout.take().zip(child.stderr.take());
    let Some((stdout, stderr)) = pipes else {
        // Unreachable with the Stdio::piped() above; stop the child anyway.
        let _ = child.kill();
        let _ = child.wait();
        return Err(LaunchError::System {
            what: "capturing rank output",
            cause: io::Error::other("output pipes missing"),
        });
    };
    let (stdout, stderr): (OwnedFd, OwnedFd) = (stdout.into(), stderr.into());
    // The final drain reads until "nothing more now", which needs these
    // non-blocking.
    if let Err(cause) = set_nonblocking(&stdout).and_then(|_| set_nonblocking(&stderr)) {
        signal_group(child.id() as libc::pid_t, libc::SIGKILL);
        let _ = child.wait();
        return Err(LaunchError::System {
            what: "preparing rank output pipes",
            cause,
        });
    }
    Ok(Spawned {
        child,
        stdin,
        stdout,
        stderr,
    })
}

/// Signals a rank's whole process group, or the process alone if it left
/// the group.
pub(crate) fn signal_group(pid: libc::pid_t, sig: i32) {
    // SAFETY: kill with a pid we started; a reaped, reused pid cannot be a
    // target because callers only signal ranks they have not reaped.
    unsafe {
        if libc::kill(-pid, sig) != 0 {
            libc::kill(pid, sig);
        }
    }
}

use std::fmt;
use std::process::ExitStatus;

/// How one rank's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankExit {
    /// It exited with this status (0 is success).
    Status(i32),
    /// A signal killed it.
    Signal(i32),
}

impl RankExit {
    pub fn from_status(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => RankExit::Status(code),
            (None, Some(sig)) => RankExit::Signal(sig),
            // Stopped/continued statuses never reach us: we only wait for exits.
            (None, None) => RankExit::Status(1),
        }
    }

    pub fn success(self) -> bool {
        self == RankExit::Status(0)
    }

    /// The launcher's own exit code for this outcome, as a shell reports it.
    pub fn exit_code(self) -> i32 {
        match self {
            RankExit::Status(code) => code,
            RankExit::Signal(sig) => 128 + sig,
        }
    }
}

impl fmt::Display for RankExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RankExit::Status(code) => write!(f, "exited with status {code}"),
            RankExit::Signal(sig) => match signal_name(sig) {
                Some(name) => write!(f, "killed by signal {sig} ({name})"),
                None => write!(f, "killed by signal {sig}"),
            },
        }
    }
}

/// The conventional name of a signal number, e.g. `SIGKILL` for 9.
pub fn signal_name(sig: i32) -> Option<&'static str> {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_signal_read_like_a_shell_reports_them() {
        assert_eq!(RankExit::Status(3).to_string(), "exited with status 3");
        assert_eq!(
            RankExit::Signal(9).to_string(),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(RankExit::Signal(9).exit_code(), 137);
        assert_eq!(RankExit::Status(3).exit_code(), 3);
        assert!(RankExit::Status(0).success());
        assert!(!RankExit::Signal(15).success());
    }

    #[test]
    fn unknown_signal_has_no_name() {
        assert_eq!(RankExit::Signal(60).to_string(), "killed by signal 60");
    }
}

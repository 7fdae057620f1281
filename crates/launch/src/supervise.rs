//! The launcher's one loop: it sleeps in poll() on the ranks' output pipes,
//! the launcher's stdin and a signalfd, and wakes only when one of them has
//! something. No thread per rank, no timers polling for exits.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::LaunchError;
use crate::exit::signal_name;
use crate::rank::Rank;
use crate::report::{JobReport, RankFailure};
use crate::sentinel::Sentinel;
use crate::signals::SignalFd;
use crate::spawn::RankProcess;
use crate::stdin::frame;

#[derive(Debug, Clone)]
pub struct SuperviseOptions {
    /// How long stopped ranks get between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl Default for SuperviseOptions {
    fn default() -> Self {
        SuperviseOptions {
            grace: Duration::from_secs(5),
        }
    }
}

/// Ctrl-C this many times and the ranks get SIGKILL instead.
const FORCE_AFTER_INTERRUPTS: u32 = 3;

/// Starts every rank, passes output, stdin and signals through, and returns
/// once all ranks have exited. If one fails the rest are stopped.
///
/// Blocks SIGCHLD, SIGINT, SIGTERM, SIGHUP and SIGPIPE in the calling thread
/// while it runs (call it from the main thread of a program with no other
/// threads that would take those signals). Ranks are tied to the calling
/// thread: they get SIGKILL if it dies.
pub fn supervise(
    ranks: Vec<RankProcess>,
    options: &SuperviseOptions,
) -> Result<JobReport, LaunchError> {
    if ranks.is_empty() {
        return Err(LaunchError::NoRanks);
    }
    let signals = SignalFd::new().map_err(LaunchError::system("blocking signals"))?;
    let sentinel = Sentinel::start().map_err(LaunchError::system("starting the sentinel"))?;
    let mut job = Job::start(ranks, &sentinel, options.grace)?;
    let result = job.run(&signals);
    job.finish();
    drop(sentinel);
    drop(signals);
    result
}

enum Source {
    Signals,
    UserStdin,
    Output(usize, bool),
    Input(usize),
}

struct Job {
    ranks: Vec<Rank>,
    reading_stdin: bool,
    failure: Option<RankFailure>,
    signal: Option<i32>,
    interrupts: u32,
    kill_at: Option<Instant>,
    grace: Duration,
}

const STDIN_CHUNK: usize = 64 * 1024;

impl Job {
    fn start(
        processes: Vec<RankProcess>,
        sentinel: &Sentinel,
        grace: Duration,
    ) -> Result<Self, LaunchError> {
        let mut job = Job {
            ranks: Vec::with_capacity(processes.len()),
            reading_stdin: processes.iter().any(|p| p.stdin.forwards()),
            failure: None,
            signal: None,
            interrupts: 0,
            kill_at: None,
            grace,
        };
        for process in processes {
            match Rank::start(process) {
                Ok(rank) => {
                    sentinel.watch(rank.pid);
                    tracing::debug!(rank = rank.rank, pid = rank.pid, "started");
                    job.ranks.push(rank);
                }
                Err(err) => {
                    job.abort();
                    return Err(err);
                }
            }
        }
        Ok(job)
    }

    /// Kills and reaps what was started, when the job cannot start whole.
    fn abort(&mut self) {
        for rank in &mut self.ranks {
            rank.kill_now();
        }
    }

    fn run(&mut self, signals: &SignalFd) -> Result<JobReport, LaunchError> {
        while self.ranks.iter().any(Rank::running) {
            let (mut fds, sources) = self.poll_set(signals);
            let timeout = match self.kill_at {
                Some(at) => at
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(i32::MAX as u128) as i32,
                None => -1,
            };
            // SAFETY: fds is a live, correctly sized pollfd array.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(LaunchError::System {
                    what: "waiting for rank events",
                    cause: err,
                });
            }
            for (fd, source) in fds.iter().zip(sources) {
                if fd.revents != 0 {
                    self.handle(source, signals)?;
                }
            }
            if self.kill_at.is_some_and(|at| Instant::now() >= at) {
                tracing::info!("grace period over; killing the remaining ranks");
                self.signal_running(libc::SIGKILL);
                self.kill_at = None;
            }
        }
        Ok(JobReport {
            failure: self.failure.clone(),
            signal: self.signal,
        })
    }

    fn poll_set(&self, signals: &SignalFd) -> (Vec<libc::pollfd>, Vec<Source>) {
        let mut fds = Vec::new();
        let mut sources = Vec::new();
        let mut add = |fd: i32, events: i16, source: Source| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            sources.push(source);
        };
        add(signals.raw_fd(), libc::POLLIN, Source::Signals);
        let mut stdin_blocked = false;
        for (i, rank) in self.ranks.iter().enumerate() {
            for (stream, is_err) in [(&rank.stdout, false), (&rank.stderr, true)] {
                if let Some(s) = stream {
                    add(s.fd.as_raw_fd(), libc::POLLIN, Source::Output(i, is_err));
                }
            }
            if let Some(feed) = &rank.stdin
                && feed.has_pending()
            {
                stdin_blocked |= feed.forwards();
                add(feed.raw_fd(), libc::POLLOUT, Source::Input(i));
            }
        }
        // Read more stdin only once the last chunk is written: a rank that
        // reads slowly slows the reading, instead of growing a buffer.
        if self.reading_stdin && !stdin_blocked {
            add(0, libc::POLLIN, Source::UserStdin);
        }
        (fds, sources)
    }

    fn handle(&mut self, source: Source, signals: &SignalFd) -> Result<(), LaunchError> {
        match source {
            Source::Signals => {
                let received = signals
                    .read()
                    .map_err(LaunchError::system("reading signals"))?;
                for sig in received {
                    self.on_signal(sig);
                }
            }
            Source::UserStdin => self.read_user_stdin(),
            Source::Output(i, is_err) => self.ranks[i].read_output(is_err, false),
            Source::Input(i) => self.ranks[i].flush_stdin(),
        }
        Ok(())
    }

    fn on_signal(&mut self, sig: i32) {
        match sig {
            libc::SIGCHLD => self.reap(),
            libc::SIGINT | libc::SIGTERM | libc::SIGHUP => self.forward(sig),
            _ => {}
        }
    }

    fn reap(&mut self) {
        for i in 0..self.ranks.len() {
            let Some(exit) = self.ranks[i].try_reap() else {
                continue;
            };
            let rank = &self.ranks[i];
            tracing::debug!(rank = rank.rank, %exit, "rank ended");
            if !exit.success() && self.failure.is_none() {
                self.failure = Some(RankFailure {
                    rank: rank.rank,
                    host: rank.host.clone(),
                    exit,
                });
                self.stop_all();
            }
        }
        if !self
            .ranks
            .iter()
            .any(|r| r.stdin.as_ref().is_some_and(|f| f.forwards()))
        {
            self.reading_stdin = false;
        }
    }

    /// SIGTERM now, SIGKILL when the grace period is over.
    fn stop_all(&mut self) {
        self.signal_running(libc::SIGTERM);
        self.kill_at.get_or_insert(Instant::now() + self.grace);
    }

    fn forward(&mut self, sig: i32) {
        self.signal = Some(sig);
        if sig == libc::SIGINT {
            self.interrupts += 1;
            if self.interrupts >= FORCE_AFTER_INTERRUPTS {
                self.signal_running(libc::SIGKILL);
                return;
            }
        } else {
            // Terminal gone or asked to terminate: the job must end even if
            // a rank ignores the signal.
            self.kill_at.get_or_insert(Instant::now() + self.grace);
        }
        let name = signal_name(sig).map(|n| n.trim_start_matches("SIG"));
        for rank in self.ranks.iter_mut().filter(|r| r.running()) {
            match (&mut rank.stdin, name) {
                // Remote ranks: the bootstrap at the far end delivers it.
                (Some(feed), Some(name)) if feed.framed() => {
                    feed.push_raw(&frame::signal(name));
                    rank.flush_stdin();
                }
                _ => rank.signal(sig),
            }
        }
    }

    fn signal_running(&self, sig: i32) {
        for rank in &self.ranks {
            rank.signal(sig);
        }
    }

    fn read_user_stdin(&mut self) {
        let mut buf = vec![0u8; STDIN_CHUNK];
        // SAFETY: reads into a live buffer. poll said fd 0 is readable, so
        // this does not block (fd 0 is shared with the shell, so it stays in
        // blocking mode).
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let kind = io::Error::last_os_error().kind();
            if matches!(kind, io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) {
                return;
            }
        }
        let data = &buf[..n.max(0) as usize];
        for rank in &mut self.ranks {
            if let Some(feed) = &mut rank.stdin
                && feed.forwards()
            {
                if data.is_empty() {
                    feed.stdin_ended();
                } else {
                    feed.push_stdin(data);
                }
                rank.flush_stdin();
            }
        }
        if data.is_empty() {
            self.reading_stdin = false;
        }
    }

    /// After the last rank exited: kill what the ranks left in their process
    /// groups and pass on the output still in the pipes.
    fn finish(&mut self) {
        for rank in &self.ranks {
            // SAFETY: signals the group of a rank we started; errors (no such
            // group) are the normal case.
            unsafe { libc::kill(-rank.pid, libc::SIGKILL) };
        }
        for rank in &mut self.ranks {
            rank.read_output(false, true);
            rank.read_output(true, true);
        }
    }
}

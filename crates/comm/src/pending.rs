//! Non-blocking calls: the call is queued, in call order, to its group's
//! worker thread, which runs the same algorithm as the blocking call (the
//! bytes still move on the I/O thread). The handle gives the buffer back.

use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex};

use crate::error::{CommError, Result};

struct Slot<T> {
    value: Mutex<Option<Result<T>>>,
    ready: Condvar,
}

/// The result of a non-blocking call, to collect with [`Pending::wait`].
#[must_use = "a pending call must be waited for to get its buffer back"]
pub struct Pending<T> {
    slot: Arc<Slot<T>>,
}

impl<T> Pending<T> {
    pub(crate) fn ready(value: Result<T>) -> Self {
        Pending {
            slot: Arc::new(Slot {
                value: Mutex::new(Some(value)),
                ready: Condvar::new(),
            }),
        }
    }

    /// Blocks until the call completes; returns its buffer or its error.
    pub fn wait(self) -> Result<T> {
        let mut v = self.slot.value.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = v.take() {
                return r;
            }
            v = self.slot.ready.wait(v).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether [`Pending::wait`] would return at once.
    pub fn is_ready(&self) -> bool {
        self.slot
            .value
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// One thread running a group's non-blocking calls in order.
pub(crate) struct Worker {
    tx: Mutex<Sender<Job>>,
}

impl Worker {
    pub fn start(rank: usize) -> Result<Worker> {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name(format!("huddle-worker-{rank}"))
            .spawn(move || {
                // Ends when the group (and with it the sender) is dropped.
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(|e| CommError::io(rank, "starting the worker thread", e))?;
        Ok(Worker { tx: Mutex::new(tx) })
    }

    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Pending<T> {
        let slot = Arc::new(Slot {
            value: Mutex::new(None),
            ready: Condvar::new(),
        });
        let out = slot.clone();
        let job: Job = Box::new(move || {
            let r = f();
            *out.value.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            out.ready.notify_all();
        });
        let sent = self.tx.lock().unwrap_or_else(|p| p.into_inner()).send(job);
        if sent.is_err() {
            return Pending::ready(Err(CommError::Shutdown));
        }
        Pending { slot }
    }
}

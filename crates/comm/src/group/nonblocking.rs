//! Non-blocking variants of the group's calls: each takes its buffer by
//! value, gets its sequence number now (so call order is kept), and runs
//! on the group's worker thread; the buffer comes back from `wait`.

use std::ops::Range;
use std::sync::atomic::Ordering;

use super::{Group, P2P_SEQ};
use crate::dtype::{Element, ReduceOp};
use crate::engine::Engine;
use crate::error::{CommError, Result};
use crate::pending::{Pending, Worker};

impl Group {
    fn worker(&self) -> Result<&Worker> {
        self.inner
            .worker
            .get_or_init(|| Worker::start(self.world_rank()))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Group, &Engine) -> Result<T> + Send + 'static,
    ) -> Pending<T> {
        let g = self.clone();
        match self.worker() {
            Ok(w) => w.submit(move || match g.engine() {
                Some(e) => f(&g, e),
                None => Err(CommError::Shutdown),
            }),
            Err(e) => Pending::ready(Err(e)),
        }
    }

    /// Non-blocking [`Group::all_reduce`]: takes the buffer and gives it
    /// back, reduced, from [`Pending::wait`]. Calls are served in call order.
    pub fn all_reduce_async<T: Element>(&self, mut buf: Vec<T>, op: ReduceOp) -> Pending<Vec<T>> {
        if self.engine().is_none() {
            return Pending::ready(Ok(buf));
        }
        let seq = self.next_seq();
        self.submit(move |g, e| g.run_all_reduce(e, seq, &mut buf, op).map(|()| buf))
    }

    pub fn all_sum_async<T: Element>(&self, buf: Vec<T>) -> Pending<Vec<T>> {
        self.all_reduce_async(buf, ReduceOp::Sum)
    }

    /// Non-blocking [`Group::all_gather`]: returns the concatenation.
    pub fn all_gather_async<T: Element>(&self, input: Vec<T>) -> Pending<Vec<T>> {
        let n = self.size();
        let len = input.len();
        let blocks: Vec<Range<usize>> = (0..n).map(|r| r * len..(r + 1) * len).collect();
        let mut output = Vec::with_capacity(n * len);
        for _ in 0..n {
            output.extend_from_slice(&input);
        }
        if self.engine().is_none() {
            return Pending::ready(Ok(output));
        }
        let seq = self.next_seq();
        self.submit(move |g, e| {
            g.run_all_gather(e, seq, &mut output, &blocks)
                .map(|()| output)
        })
    }

    /// Non-blocking [`Group::broadcast`].
    pub fn broadcast_async<T: Element>(&self, mut buf: Vec<T>, root: usize) -> Pending<Vec<T>> {
        if let Err(e) = self.check_rank("broadcast root", root) {
            return Pending::ready(Err(e));
        }
        if self.engine().is_none() {
            return Pending::ready(Ok(buf));
        }
        let seq = self.next_seq();
        self.submit(move |g, e| g.run_broadcast(e, seq, &mut buf, root).map(|()| buf))
    }

    /// Non-blocking [`Group::send`]; the data comes back once sent.
    pub fn send_async<T: Element>(&self, data: Vec<T>, dst: usize) -> Pending<Vec<T>> {
        if let Err(e) = self.check_peer("send destination", dst) {
            return Pending::ready(Err(e));
        }
        let seq = P2P_SEQ | self.inner.p2p_sent[dst].fetch_add(1, Ordering::Relaxed);
        self.submit(move |g, e| g.run_send(e, seq, &data, dst).map(|()| data))
    }

    /// Non-blocking [`Group::recv`] into `buf` (its length says how much).
    pub fn recv_async<T: Element>(&self, mut buf: Vec<T>, src: usize) -> Pending<Vec<T>> {
        if let Err(e) = self.check_peer("recv source", src) {
            return Pending::ready(Err(e));
        }
        let seq = P2P_SEQ | self.inner.p2p_received[src].fetch_add(1, Ordering::Relaxed);
        self.submit(move |g, e| g.run_recv(e, seq, &mut buf, src).map(|()| buf))
    }
}

//! [`Group`]: the public face of the crate. A group is a set of ranks that
//! call the same collectives in the same order. Each call gets the group's
//! next sequence number, checks its arguments, picks an algorithm (the same
//! on every rank) and runs it.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use mio::{Poll, Waker};

use crate::algo::{self, Ctx, ScratchPool, layout};
use crate::bootstrap;
use crate::config::{Algo, Config};
use crate::dtype::{Element, ReduceOp};
use crate::engine::{Engine, Shared};
use crate::error::{CommError, Result};
use crate::io_thread::{IoThread, WAKER};
use crate::pending::Worker;
use crate::wire::{OpDesc, OpKind};

mod nonblocking;

const WORLD_GROUP: u64 = 0x6875_6464_6c65_0001;
/// Point-to-point sequence numbers live apart from collective ones.
const P2P_SEQ: u64 = 1 << 63;
/// Until (or without) a measurement, messages up to this size use the mesh.
const DEFAULT_MESH_MAX: u64 = 64 * 1024;

struct GroupInner {
    engine: Option<Arc<Engine>>,
    id: u64,
    rank: usize,
    members: Vec<usize>,
    seq: AtomicU64,
    p2p_sent: Vec<AtomicU64>,
    p2p_received: Vec<AtomicU64>,
    mesh_max: AtomicU64,
    scratch: ScratchPool,
    worker: OnceLock<std::result::Result<Worker, CommError>>,
    local: (usize, usize),
}

/// A set of ranks that run collectives together.
///
/// Every member must make the same calls in the same order (with matching
/// lengths and types); a mismatch is an error naming both ranks. A
/// single-member group turns every call into a no-op (or a copy).
/// `Group` is cheap to clone; clones share the call sequence.
#[derive(Clone)]
pub struct Group {
    inner: Arc<GroupInner>,
    algo: Option<Algo>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("rank", &self.rank())
            .field("size", &self.size())
            .field("members", &self.inner.members)
            .finish()
    }
}

fn mix(a: u64, b: u64) -> u64 {
    // splitmix64 over the pair: group ids only need to differ, not be secret.
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Group {
    fn from_parts(
        engine: Option<Arc<Engine>>,
        id: u64,
        rank: usize,
        members: Vec<usize>,
        mesh_max: u64,
        local: (usize, usize),
    ) -> Group {
        let n = members.len();
        Group {
            inner: Arc::new(GroupInner {
                engine,
                id,
                rank,
                members,
                seq: AtomicU64::new(0),
                p2p_sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
                p2p_received: (0..n).map(|_| AtomicU64::new(0)).collect(),
                mesh_max: AtomicU64::new(mesh_max),
                scratch: ScratchPool::default(),
                worker: OnceLock::new(),
                local,
            }),
            algo: None,
        }
    }

    /// A group of one: every collective is a no-op.
    pub fn single() -> Group {
        Group::from_parts(None, WORLD_GROUP, 0, vec![0], DEFAULT_MESH_MAX, (0, 1))
    }

    /// Joins the job described by `cfg` (blocks until all ranks are connected).
    pub fn connect(cfg: Config) -> Result<Group> {
        cfg.validate()?;
        let local = (cfg.local_rank, cfg.local_size);
        if cfg.world_size == 1 {
            return Ok(Group::from_parts(
                None,
                WORLD_GROUP,
                0,
                vec![0],
                DEFAULT_MESH_MAX,
                local,
            ));
        }
        let me = cfg.rank;
        let mut mesh = bootstrap::establish(&cfg)?;
        let links =
            crate::transport::shm::setup::establish(&cfg, mesh.tuning.shm, &mut mesh.conns)?;
        let io_err = |what: &str| {
            let what = what.to_string();
            move |e| CommError::io(me, what, e)
        };
        let poll = Poll::new().map_err(io_err("creating the poller"))?;
        let waker = Waker::new(poll.registry(), WAKER).map_err(io_err("creating the waker"))?;
        let shared = Arc::new(Shared::new(waker, me, cfg.world_size, links));
        let io = IoThread::new(
            poll,
            shared.clone(),
            mesh.conns,
            cfg.world_size,
            cfg.peer_timeout,
        )
        .map_err(io_err("setting up connections"))?
        .spawn(me)
        .map_err(io_err("starting the I/O thread"))?;
        let tuning = mesh.tuning;
        let engine = Arc::new(Engine::new(shared, tuning, io));
        let group = Group::from_parts(
            Some(engine),
            WORLD_GROUP,
            me,
            (0..cfg.world_size).collect(),
            DEFAULT_MESH_MAX,
            local,
        );
        if tuning.algo == Algo::Auto {
            let mesh_max = crate::calibrate::mesh_max_bytes(&group)?;
            group.inner.mesh_max.store(mesh_max, Ordering::Relaxed);
        }
        Ok(group)
    }

    /// This rank's index in the group, `0..size()`.
    pub fn rank(&self) -> usize {
        self.inner.rank
    }

    pub fn size(&self) -> usize {
        self.inner.members.len()
    }

    /// This rank's index in the whole job.
    pub fn world_rank(&self) -> usize {
        self.inner.members[self.inner.rank]
    }

    /// World ranks of the members, in group-rank order.
    pub fn members(&self) -> &[usize] {
        &self.inner.members
    }

    /// (rank among the ranks on this host, ranks on this host).
    pub fn local(&self) -> (usize, usize) {
        self.inner.local
    }

    /// How this rank exchanges data with group member `member`; `None`
    /// for itself, out of range, or in a group of one.
    pub fn transport(&self, member: usize) -> Option<crate::Transport> {
        let engine = self.engine()?;
        let world = *self.inner.members.get(member)?;
        if member == self.inner.rank {
            return None;
        }
        Some(if engine.shared.link(world).is_some() {
            crate::Transport::Shm
        } else {
            crate::Transport::Tcp
        })
    }

    /// Messages up to this many bytes use the mesh under `Algo::Auto`
    /// (measured by rank 0 at init).
    pub fn mesh_max_bytes(&self) -> u64 {
        self.inner.mesh_max.load(Ordering::Relaxed)
    }

    /// The same group (same call sequence), always running `algo`. Every
    /// rank must make the same choice for the same call.
    pub fn with_algo(&self, algo: Algo) -> Group {
        Group {
            inner: self.inner.clone(),
            algo: Some(algo),
        }
    }

    /// The algorithm this handle runs: forced by [`Group::with_algo`], or
    /// what rank 0 chose for the job (`Auto` picks per call by size).
    pub fn algo(&self) -> Algo {
        self.algo
            .or_else(|| self.inner.engine.as_ref().map(|e| e.tuning.algo))
            .unwrap_or(Algo::Auto)
    }

    fn engine(&self) -> Option<&Engine> {
        if self.size() == 1 {
            None
        } else {
            self.inner.engine.as_deref()
        }
    }

    fn next_seq(&self) -> u64 {
        self.inner.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn ctx<'a>(&'a self, engine: &'a Engine, seq: u64) -> Ctx<'a> {
        Ctx {
            engine,
            group: self.inner.id,
            seq,
            rank: self.inner.rank,
            members: &self.inner.members,
            piece_bytes: engine.tuning.piece_bytes,
            scratch: &self.inner.scratch,
        }
    }

    fn choose(&self, engine: &Engine, bytes: usize) -> Algo {
        match self.algo.unwrap_or(engine.tuning.algo) {
            Algo::Auto if bytes as u64 <= self.mesh_max_bytes() => Algo::Mesh,
            Algo::Auto => Algo::Ring,
            forced => forced,
        }
    }

    fn desc<T: Element>(
        kind: OpKind,
        reduce: Option<ReduceOp>,
        count: usize,
        arg: usize,
    ) -> OpDesc {
        OpDesc {
            kind,
            reduce,
            dtype: T::DTYPE,
            count: count as u64,
            arg: arg as u32,
        }
    }

    fn check_rank(&self, what: &str, r: usize) -> Result<()> {
        if r >= self.size() {
            return Err(CommError::InvalidArgument(format!(
                "{what} {r} is out of range for a group of {}",
                self.size()
            )));
        }
        Ok(())
    }

    // ---- all-reduce ----

    /// Element-wise sum over all ranks, in place. Bit-identical on every
    /// rank, whichever algorithm runs.
    pub fn all_sum<T: Element>(&self, buf: &mut [T]) -> Result<()> {
        self.all_reduce(buf, ReduceOp::Sum)
    }

    pub fn all_max<T: Element>(&self, buf: &mut [T]) -> Result<()> {
        self.all_reduce(buf, ReduceOp::Max)
    }

    pub fn all_min<T: Element>(&self, buf: &mut [T]) -> Result<()> {
        self.all_reduce(buf, ReduceOp::Min)
    }

    pub fn all_prod<T: Element>(&self, buf: &mut [T]) -> Result<()> {
        self.all_reduce(buf, ReduceOp::Prod)
    }

    pub fn all_reduce<T: Element>(&self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        let Some(engine) = self.engine() else {
            return Ok(());
        };
        self.run_all_reduce(engine, self.next_seq(), buf, op)
    }

    fn run_all_reduce<T: Element>(
        &self,
        engine: &Engine,
        seq: u64,
        buf: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        let desc = Self::desc::<T>(OpKind::AllReduce, Some(op), buf.len(), 0);
        let cx = self.ctx(engine, seq);
        match self.choose(engine, std::mem::size_of_val(buf)) {
            Algo::Ring => algo::ring::all_reduce(&cx, buf, op, desc),
            _ => algo::mesh::all_reduce(&cx, buf, op, desc),
        }
    }

    // ---- all-gather ----

    /// Concatenates every rank's `input` (all the same length) into `output`
    /// (`size() * input.len()` long), in rank order.
    pub fn all_gather<T: Element>(&self, input: &[T], output: &mut [T]) -> Result<()> {
        let counts = vec![input.len(); self.size()];
        self.all_gather_varied(input, output, &counts)
    }

    /// As [`Group::all_gather`] with `counts[r]` elements from rank r;
    /// every rank passes the same `counts`.
    pub fn all_gather_varied<T: Element>(
        &self,
        input: &[T],
        output: &mut [T],
        counts: &[usize],
    ) -> Result<()> {
        let blocks = self.blocks(input.len(), output.len(), counts)?;
        output[blocks[self.rank()].clone()].copy_from_slice(input);
        let Some(engine) = self.engine() else {
            return Ok(());
        };
        self.run_all_gather(engine, self.next_seq(), output, &blocks)
    }

    fn blocks(&self, input: usize, output: usize, counts: &[usize]) -> Result<Vec<Range<usize>>> {
        if counts.len() != self.size() {
            return Err(CommError::InvalidArgument(format!(
                "all_gather: {} counts given for a group of {}",
                counts.len(),
                self.size()
            )));
        }
        if counts[self.rank()] != input {
            return Err(CommError::InvalidArgument(format!(
                "all_gather: rank {} passes {input} elements but counts says {}",
                self.rank(),
                counts[self.rank()]
            )));
        }
        let mut at = 0usize;
        let blocks: Vec<Range<usize>> = counts
            .iter()
            .map(|c| {
                at += c;
                at - c..at
            })
            .collect();
        if at != output {
            return Err(CommError::InvalidArgument(format!(
                "all_gather: output holds {output} elements but the counts add up to {at}"
            )));
        }
        Ok(blocks)
    }

    fn run_all_gather<T: Element>(
        &self,
        engine: &Engine,
        seq: u64,
        output: &mut [T],
        blocks: &[Range<usize>],
    ) -> Result<()> {
        let desc = Self::desc::<T>(OpKind::AllGather, None, output.len(), 0);
        let cx = self.ctx(engine, seq);
        match self.choose(engine, std::mem::size_of_val(output)) {
            Algo::Ring => algo::ring::all_gather(&cx, output, blocks, desc),
            _ => algo::mesh::all_gather(&cx, output, blocks, desc),
        }
    }

    // ---- reduce-scatter ----

    /// The range of a `len`-element reduce-scatter input that lands on `rank`
    /// (balanced parts; the first ranks get the smaller ones).
    pub fn reduce_scatter_part(&self, len: usize, rank: usize) -> Range<usize> {
        layout::part(len, self.size(), rank)
    }

    /// Reduces every rank's `input` element-wise and leaves part `rank()`
    /// of the result (see [`Group::reduce_scatter_part`]) in `output`.
    pub fn reduce_scatter<T: Element>(
        &self,
        input: &[T],
        output: &mut [T],
        op: ReduceOp,
    ) -> Result<()> {
        let mine = self.reduce_scatter_part(input.len(), self.rank());
        if output.len() != mine.len() {
            return Err(CommError::InvalidArgument(format!(
                "reduce_scatter: rank {}'s part of {} elements is {} long, but the output holds {}",
                self.rank(),
                input.len(),
                mine.len(),
                output.len()
            )));
        }
        let Some(engine) = self.engine() else {
            output.copy_from_slice(input);
            return Ok(());
        };
        let desc = Self::desc::<T>(OpKind::ReduceScatter, Some(op), input.len(), 0);
        let cx = self.ctx(engine, self.next_seq());
        match self.choose(engine, std::mem::size_of_val(input)) {
            Algo::Ring => algo::ring::reduce_scatter(&cx, input, output, op, desc),
            _ => algo::mesh::reduce_scatter(&cx, input, output, op, desc),
        }
    }

    // ---- broadcast, point to point, barrier ----

    /// Copies `root`'s buffer into every rank's `buf`.
    pub fn broadcast<T: Element>(&self, buf: &mut [T], root: usize) -> Result<()> {
        self.check_rank("broadcast root", root)?;
        let Some(engine) = self.engine() else {
            return Ok(());
        };
        self.run_broadcast(engine, self.next_seq(), buf, root)
    }

    fn run_broadcast<T: Element>(
        &self,
        engine: &Engine,
        seq: u64,
        buf: &mut [T],
        root: usize,
    ) -> Result<()> {
        let desc = Self::desc::<T>(OpKind::Broadcast, None, buf.len(), root);
        let cx = self.ctx(engine, seq);
        match self.choose(engine, std::mem::size_of_val(buf)) {
            Algo::Ring => algo::ring::broadcast(&cx, buf, root, desc),
            _ => algo::mesh::broadcast(&cx, buf, root, desc),
        }
    }

    fn check_peer(&self, what: &str, peer: usize) -> Result<&Engine> {
        self.check_rank(what, peer)?;
        if peer == self.rank() {
            return Err(CommError::InvalidArgument(format!(
                "{what} {peer} is this rank itself"
            )));
        }
        self.engine().ok_or_else(|| {
            CommError::InvalidArgument(format!("{what} {peer}: this group has one member"))
        })
    }

    /// Sends `data` to group rank `dst`, which must [`Group::recv`] the same
    /// length and type. Returns once the data is handed to the transport;
    /// never waits for the receiver to call `recv`.
    pub fn send<T: Element>(&self, data: &[T], dst: usize) -> Result<()> {
        let engine = self.check_peer("send destination", dst)?;
        let seq = P2P_SEQ | self.inner.p2p_sent[dst].fetch_add(1, Ordering::Relaxed);
        self.run_send(engine, seq, data, dst)
    }

    fn run_send<T: Element>(
        &self,
        engine: &Engine,
        seq: u64,
        data: &[T],
        dst: usize,
    ) -> Result<()> {
        let desc = Self::desc::<T>(OpKind::SendRecv, None, data.len(), 0);
        algo::p2p::send(&self.ctx(engine, seq), data, dst, desc)
    }

    /// Receives from group rank `src` exactly what it [`Group::send`]s.
    pub fn recv<T: Element>(&self, buf: &mut [T], src: usize) -> Result<()> {
        let engine = self.check_peer("recv source", src)?;
        let seq = P2P_SEQ | self.inner.p2p_received[src].fetch_add(1, Ordering::Relaxed);
        self.run_recv(engine, seq, buf, src)
    }

    fn run_recv<T: Element>(
        &self,
        engine: &Engine,
        seq: u64,
        buf: &mut [T],
        src: usize,
    ) -> Result<()> {
        let desc = Self::desc::<T>(OpKind::SendRecv, None, buf.len(), 0);
        algo::p2p::recv(&self.ctx(engine, seq), buf, src, desc)
    }

    /// Returns once every member has called `barrier`.
    pub fn barrier(&self) -> Result<()> {
        let Some(engine) = self.engine() else {
            return Ok(());
        };
        let desc = Self::desc::<u8>(OpKind::Barrier, None, 0, 0);
        algo::mesh::barrier(&self.ctx(engine, self.next_seq()), desc)
    }

    // ---- subgroups ----

    /// Collective: members with the same `color` form a new group, ordered
    /// by `key` (ties by rank in this group). Every member gets its group.
    pub fn split(&self, color: u32, key: u32) -> Result<Group> {
        let Some(engine) = self.engine() else {
            return Ok(Group::from_parts(
                self.inner.engine.clone(),
                mix(self.inner.id, u64::from(color)),
                0,
                vec![self.world_rank()],
                self.mesh_max_bytes(),
                self.inner.local,
            ));
        };
        let seq = self.next_seq();
        let n = self.size();
        let mut all = vec![0i64; 2 * n];
        let r = self.rank();
        all[2 * r] = i64::from(color);
        all[2 * r + 1] = i64::from(key);
        let blocks: Vec<Range<usize>> = (0..n).map(|g| 2 * g..2 * g + 2).collect();
        self.with_algo(Algo::Mesh)
            .run_all_gather(engine, seq, &mut all, &blocks)?;
        let mut chosen: Vec<(i64, usize)> = (0..n)
            .filter(|&g| all[2 * g] == i64::from(color))
            .map(|g| (all[2 * g + 1], g))
            .collect();
        chosen.sort();
        let rank = chosen.iter().position(|&(_, g)| g == r).unwrap_or(0);
        let members = chosen.iter().map(|&(_, g)| self.inner.members[g]).collect();
        let id = mix(mix(self.inner.id, seq), u64::from(color));
        Ok(Group::from_parts(
            self.inner.engine.clone(),
            id,
            rank,
            members,
            self.mesh_max_bytes(),
            self.inner.local,
        ))
    }
}

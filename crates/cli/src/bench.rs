//! `huddle bench`: benchmark programs that print numbers. `comm` times the
//! collectives the nccl-tests way (p50 time, algorithm and bus bandwidth)
//! and, in the same run, a raw full-duplex TCP exchange between rank 0 and
//! rank 1 as the yardstick. `--check` first verifies every collective's
//! results (check.rs). `generate` (bench_generate.rs) times a model's
//! prompt processing and token generation.

mod check;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use huddle_comm::{Algo, Group, ReduceOp};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time the collectives (run under `huddle launch -n N -- huddle bench comm`).
    Comm(CommArgs),
    /// Prompt and generation tokens/s of a model, llama-bench style.
    #[cfg(feature = "lm")]
    Generate(crate::bench_generate::GenerateBenchArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchOp {
    // The issue and the table spell them with underscores; clap with dashes.
    #[value(alias = "all_sum")]
    AllSum,
    #[value(alias = "all_gather")]
    AllGather,
    #[value(alias = "reduce_scatter")]
    ReduceScatter,
    Broadcast,
    #[value(alias = "send_recv")]
    SendRecv,
}

impl BenchOp {
    fn name(self) -> &'static str {
        match self {
            BenchOp::AllSum => "all_sum",
            BenchOp::AllGather => "all_gather",
            BenchOp::ReduceScatter => "reduce_scatter",
            BenchOp::Broadcast => "broadcast",
            BenchOp::SendRecv => "send_recv",
        }
    }

    /// nccl-tests' bus bandwidth factor: what each link carries relative
    /// to the message.
    fn bus_factor(self, n: usize) -> f64 {
        let n = n as f64;
        match self {
            BenchOp::AllSum => 2.0 * (n - 1.0) / n,
            BenchOp::AllGather | BenchOp::ReduceScatter => (n - 1.0) / n,
            BenchOp::Broadcast | BenchOp::SendRecv => 1.0,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum AlgoArg {
    Auto,
    Ring,
    Mesh,
}

#[derive(Args, Debug)]
pub struct CommArgs {
    /// Operations to time.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "all-sum,all-gather,reduce-scatter,broadcast,send-recv"
    )]
    pub ops: Vec<BenchOp>,
    /// Message sizes in bytes (suffixes K, M, G are powers of 1024);
    /// default: powers of 4 from 4 B to 64 MiB.
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Vec<usize>,
    /// Timed iterations per size (the p50 is reported).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Force an algorithm (default: what the group chose at init).
    #[arg(long, value_enum)]
    pub algo: Option<AlgoArg>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// First run every collective once per size and verify the results
    /// exactly on every rank (fails if any is wrong).
    #[arg(long)]
    pub check: bool,
    /// Rank 0 prints when it started, joined the group and finished a first
    /// 4-byte all_sum, in Unix seconds (to time a launch end to end).
    #[arg(long)]
    pub timeline: bool,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1usize << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: usize = num
        .trim_end_matches(['b', 'B'])
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 4, 64K or 16M"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

pub fn run(args: BenchArgs) -> anyhow::Result<i32> {
    match args.what {
        BenchCommand::Comm(a) => comm(a),
        #[cfg(feature = "lm")]
        BenchCommand::Generate(a) => crate::bench_generate::run(a),
    }
}

struct Row {
    op: BenchOp,
    bytes: usize,
    p50_us: f64,
    algbw: f64,
    busbw: f64,
}

fn comm(args: CommArgs) -> anyhow::Result<i32> {
    let started = unix_now();
    let world = huddle_comm::init().context("joining the job")?;
    if args.timeline {
        let joined = unix_now();
        world.all_sum(&mut [1f32])?;
        let first = unix_now();
        if world.rank() == 0 {
            note(
                &args,
                &format!(
                    "# timeline (unix s): started {started:.6} joined {joined:.6} first all_sum {first:.6}"
                ),
            );
        }
    }
    let g = match args.algo {
        None => world.clone(),
        Some(AlgoArg::Auto) => world.with_algo(Algo::Auto),
        Some(AlgoArg::Ring) => world.with_algo(Algo::Ring),
        Some(AlgoArg::Mesh) => world.with_algo(Algo::Mesh),
    };
    let sizes = if args.sizes.is_empty() {
        (0..13).map(|k| 4usize << (2 * k)).collect()
    } else {
        args.sizes.clone()
    };
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    if args.check {
        check::check(&g, &sizes)?;
        if g.rank() == 0 {
            note(
                &args,
                &format!(
                    "# check: all_sum, all_sum_async, all_max, all_min, all_prod, all_gather, \
                     reduce_scatter, broadcast, send/recv and barrier exact on {} ranks",
                    g.size()
                ),
            );
        }
    }
    let max = sizes.iter().copied().max().unwrap_or(4);
    let n = g.size();
    // all_gather and reduce_scatter move at least one element per rank,
    // even for sizes below that.
    let elems = max.div_ceil(4).max(n);
    let mut a = vec![1f32; elems];
    let mut b = vec![0f32; elems];
    let mut rows = Vec::new();
    for &op in &args.ops {
        if op == BenchOp::SendRecv && n < 2 {
            continue;
        }
        for &size in &sizes {
            let count = (size / 4).max(1);
            let (bytes, times) = time_op(&g, op, count, &mut a, &mut b, args.warmup, args.iters)?;
            let p50 = percentile50(times);
            let algbw = bytes as f64 / p50.as_secs_f64() / 1e9;
            rows.push(Row {
                op,
                bytes,
                p50_us: p50.as_secs_f64() * 1e6,
                algbw,
                busbw: algbw * op.bus_factor(n),
            });
        }
    }
    let raw = if n >= 2 {
        raw_exchange(&g, max, args.iters.min(10))?
    } else {
        None
    };
    world.barrier()?;
    if g.rank() == 0 {
        report(&args, &g, &rows, raw, max);
    }
    Ok(0)
}

/// A comment line beside the results: on stderr under `--json`, so that
/// stdout stays one JSON document.
fn note(args: &CommArgs, line: &str) {
    if args.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn percentile50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `op` on `count` f32 per rank; returns the bytes nccl-tests would
/// report and the per-iteration times.
fn time_op(
    g: &Group,
    op: BenchOp,
    count: usize,
    a: &mut [f32],
    b: &mut [f32],
    warmup: usize,
    iters: usize,
) -> anyhow::Result<(usize, Vec<Duration>)> {
    let n = g.size();
    let (r, next, prev) = (g.rank(), (g.rank() + 1) % n, (g.rank() + n - 1) % n);
    // all_gather/reduce_scatter: `count` is the whole (gathered) buffer.
    let per_rank = (count / n).max(1);
    let bytes = match op {
        BenchOp::AllGather | BenchOp::ReduceScatter => per_rank * n * 4,
        _ => count * 4,
    };
    let mut times = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        // Start together, so a rank's time is its latency from the common
        // start (OSU style) rather than from whenever it got here.
        g.barrier()?;
        let t = Instant::now();
        match op {
            BenchOp::AllSum => g.all_sum(&mut a[..count])?,
            BenchOp::AllGather => g.all_gather(&a[..per_rank], &mut b[..per_rank * n])?,
            BenchOp::ReduceScatter => {
                let part = g.reduce_scatter_part(per_rank * n, r);
                g.reduce_scatter(&a[..per_rank * n], &mut b[..part.len()], ReduceOp::Sum)?
            }
            BenchOp::Broadcast => g.broadcast(&mut a[..count], 0)?,
            BenchOp::SendRecv => {
                // Everyone sends to the next rank and receives from the
                // previous one at the same time.
                let pending = g.send_async(a[..count].to_vec(), next);
                g.recv(&mut b[..count], prev)?;
                pending.wait()?;
            }
        }
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    // An iteration takes as long as its slowest rank (a broadcast root, for
    // one, is done as soon as its data is queued).
    g.all_max(&mut times)?;
    Ok((
        bytes,
        times.into_iter().map(Duration::from_secs_f64).collect(),
    ))
}

struct Raw {
    bytes: usize,
    p50_us: f64,
    gbps: f64,
    /// A 4-byte ping-pong's round trip, p50: the latency yardstick.
    rtt_us: f64,
}

/// Ping-pongs timed for the raw round trip.
const PING_PONGS: usize = 200;

/// Plain sockets between rank 0 and rank 1, both directions at once, no
/// framing: the yardstick for the collectives' bandwidth.
fn raw_exchange(g: &Group, bytes: usize, iters: usize) -> anyhow::Result<Option<Raw>> {
    let r = g.rank();
    // Rank 0 listens next to the coordinator and shares the port and a
    // one-time secret through the (authenticated) group.
    let mut hello = [0i64; 3];
    let listener = if r == 0 {
        let host = std::env::var("HUDDLE_COORDINATOR").unwrap_or_else(|_| "127.0.0.1:0".into());
        let ip = host
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip());
        let l = TcpListener::bind((ip, 0)).context("raw exchange: listening")?;
        hello = [l.local_addr()?.port() as i64, rand_i64(), rand_i64()];
        Some(l)
    } else {
        None
    };
    g.broadcast(&mut hello, 0)?;
    let mut result = None;
    if r <= 1 {
        let mut s = if let Some(l) = &listener {
            loop {
                let (mut s, _) = l.accept().context("raw exchange: accept")?;
                let mut got = [0u8; 16];
                if s.read_exact(&mut got).is_ok()
                    && got[..8] == hello[1].to_le_bytes()
                    && got[8..] == hello[2].to_le_bytes()
                {
                    break s;
                }
            }
        } else {
            let host = std::env::var("HUDDLE_COORDINATOR").context("HUDDLE_COORDINATOR")?;
            let ip = host
                .to_socket_addrs()?
                .next()
                .context("resolving the coordinator")?
                .ip();
            let mut s = TcpStream::connect(SocketAddr::new(ip, hello[0] as u16))
                .context("raw exchange: connect")?;
            s.write_all(&hello[1].to_le_bytes())?;
            s.write_all(&hello[2].to_le_bytes())?;
            s
        };
        s.set_nodelay(true)?;
        let mut times = Vec::new();
        let out = vec![7u8; bytes];
        let mut inb = vec![0u8; bytes];
        for _ in 0..iters + 1 {
            // Line up both sides before each timed exchange.
            s.write_all(&[1])?;
            s.read_exact(&mut [0u8; 1])?;
            let t = Instant::now();
            let mut w = s.try_clone()?;
            std::thread::scope(|sc| -> anyhow::Result<()> {
                let writer = sc.spawn(|| w.write_all(&out));
                s.read_exact(&mut inb)?;
                writer
                    .join()
                    .map_err(|_| anyhow::anyhow!("raw exchange writer panicked"))??;
                Ok(())
            })?;
            times.push(t.elapsed());
        }
        times.remove(0);
        let p50 = percentile50(times);
        let mut round_trips = Vec::with_capacity(PING_PONGS);
        let mut word = [0u8; 4];
        for _ in 0..PING_PONGS {
            let t = Instant::now();
            if r == 0 {
                s.write_all(&word)?;
                s.read_exact(&mut word)?;
            } else {
                s.read_exact(&mut word)?;
                s.write_all(&word)?;
            }
            round_trips.push(t.elapsed());
        }
        result = Some(Raw {
            bytes,
            p50_us: p50.as_secs_f64() * 1e6,
            gbps: bytes as f64 / p50.as_secs_f64() / 1e9,
            rtt_us: percentile50(round_trips).as_secs_f64() * 1e6,
        });
    }
    g.barrier()?;
    Ok(result)
}

fn rand_i64() -> i64 {
    // Good enough for a one-time check that the right process connected.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (t as i64) ^ (std::process::id() as i64).rotate_left(32) ^ (&t as *const u128 as i64)
}

/// How rank 0 reaches the others: one word when they all agree
/// ("shm", "tcp"), else each peer's.
fn transports(g: &Group) -> String {
    let each: Vec<(usize, String)> = (0..g.size())
        .filter_map(|m| g.transport(m).map(|t| (m, t.to_string())))
        .collect();
    match each.first() {
        None => "none (one rank)".into(),
        Some((_, t)) if each.iter().all(|(_, x)| x == t) => t.clone(),
        Some(_) => each
            .iter()
            .map(|(m, t)| format!("rank {m} {t}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn report(args: &CommArgs, g: &Group, rows: &[Row], raw: Option<Raw>, max: usize) {
    let algo = match g.algo() {
        Algo::Auto => format!("auto (mesh up to {} B)", g.mesh_max_bytes()),
        a => format!("{a:?}").to_lowercase(),
    };
    if args.json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({"op": r.op.name(), "bytes": r.bytes, "p50_us": r.p50_us, "algbw_gbps": r.algbw, "busbw_gbps": r.busbw})
            })
            .collect();
        let raw = raw.map(
            |r| serde_json::json!({"bytes": r.bytes, "p50_us": r.p50_us, "gbps_each_way": r.gbps, "rtt_4b_us": r.rtt_us}),
        );
        let doc = serde_json::json!({"ranks": g.size(), "dtype": "f32", "algo": algo, "iters": args.iters, "transport": transports(g), "results": rows, "raw_tcp_exchange": raw});
        println!("{doc}");
        return;
    }
    println!(
        "# huddle bench comm: {} ranks, f32, algo {algo}, p50 of {} iterations",
        g.size(),
        args.iters
    );
    println!("# transport: {}", transports(g));
    println!(
        "# {:>14} {:>12} {:>12} {:>12} {:>12}",
        "op", "bytes", "time (us)", "algbw (GB/s)", "busbw (GB/s)"
    );
    for r in rows {
        println!(
            "  {:>14} {:>12} {:>12.1} {:>12.3} {:>12.3}",
            r.op.name(),
            r.bytes,
            r.p50_us,
            r.algbw,
            r.busbw
        );
    }
    match raw {
        Some(r) => {
            println!(
                "# raw TCP full-duplex exchange, rank 0 <-> rank 1, {} bytes each way: {:.1} us, {:.3} GB/s each way",
                r.bytes, r.p50_us, r.gbps
            );
            println!(
                "# raw TCP ping-pong, rank 0 <-> rank 1, 4 bytes: round trip {:.1} us (p50 of {PING_PONGS})",
                r.rtt_us
            );
        }
        None if g.size() < 2 => println!("# raw TCP exchange skipped: one rank"),
        None => println!("# raw TCP exchange of {max} bytes: not measured"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_binary_suffixes() {
        assert_eq!(parse_size("4"), Ok(4));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn ops_accept_underscores_and_dashes() {
        for (name, op) in [
            ("all_sum", BenchOp::AllSum),
            ("all-sum", BenchOp::AllSum),
            ("all_gather", BenchOp::AllGather),
            ("reduce_scatter", BenchOp::ReduceScatter),
            ("reduce-scatter", BenchOp::ReduceScatter),
            ("broadcast", BenchOp::Broadcast),
            ("send_recv", BenchOp::SendRecv),
            ("send-recv", BenchOp::SendRecv),
        ] {
            assert_eq!(BenchOp::from_str(name, false), Ok(op), "{name}");
        }
    }

    #[test]
    fn bus_factors_follow_nccl_tests() {
        assert_eq!(BenchOp::AllSum.bus_factor(4), 1.5);
        assert_eq!(BenchOp::AllGather.bus_factor(4), 0.75);
        assert_eq!(BenchOp::Broadcast.bus_factor(4), 1.0);
    }
}

//! Joining a job: every rank registers its listening addresses with rank 0
//! (the coordinator), rank 0 checks that everyone agrees on the job and
//! hands out the address table and the tuning, and then every pair of ranks
//! connects directly (the higher rank dials the lower one).
//!
//! A rank with several addresses (`Config::addresses`, from the hostfile's
//! `ips`) advertises all of them, and every peer opens its set of
//! connections to each one, so traffic stripes over every link between two
//! hosts.
//!
//! Every connection, to the coordinator or between peers, first passes the
//! token handshake of `auth`. Everything here is blocking and bounded by the
//! join timeout; the connections are handed to the engine afterwards.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::auth::{self, AuthFailure};
use crate::codec::{Decoder, Encoder, read_msg, write_msg};
use crate::config::{Algo, Config};
use crate::error::{CommError, Result};
use crate::transport::tcp;

/// huddle's version: every rank of a job must run the same one.
pub(crate) const VERSION: &str = concat!("huddle-comm ", env!("CARGO_PKG_VERSION"), " proto 2");

/// What rank 0 decides for everyone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    pub algo: Algo,
    pub conns_per_peer: usize,
    pub piece_bytes: usize,
    /// Same-host pairs use shared memory.
    pub shm: bool,
}

/// The outcome of bootstrap: open, authenticated connections to every peer.
pub(crate) struct Mesh {
    pub conns: Vec<(usize, TcpStream)>,
    pub tuning: Tuning,
}

struct Clock {
    start: Instant,
    limit: Duration,
}

impl Clock {
    fn left(&self) -> Option<Duration> {
        self.limit
            .checked_sub(self.start.elapsed())
            .filter(|d| !d.is_zero())
    }
}

pub(crate) fn establish(cfg: &Config) -> Result<Mesh> {
    let clock = Clock {
        start: Instant::now(),
        limit: cfg.join_timeout,
    };
    let coord = resolve(&cfg.coordinator, cfg.rank)?;
    let (listeners, table, tuning) = if cfg.rank == 0 {
        coordinate(cfg, &coord, &clock)?
    } else {
        register(cfg, &coord, &clock)?
    };
    let conns = connect_peers(cfg, &listeners, &table, tuning.conns_per_peer, &clock)?;
    Ok(Mesh { conns, tuning })
}

fn resolve(coordinator: &str, rank: usize) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = coordinator
        .to_socket_addrs()
        .map_err(|e| {
            CommError::Config(format!(
                "rank {rank}: cannot resolve coordinator `{coordinator}`: {e}"
            ))
        })?
        .collect();
    if addrs.is_empty() {
        return Err(CommError::Config(format!(
            "coordinator `{coordinator}` resolves to no address"
        )));
    }
    Ok(addrs)
}

fn io_err(rank: usize, what: String) -> impl FnOnce(std::io::Error) -> CommError {
    move |e| CommError::io(rank, what, e)
}

fn auth_err(rank: usize, peer: String, f: AuthFailure) -> CommError {
    CommError::Auth {
        rank,
        peer,
        reason: f.to_string(),
    }
}

fn set_deadline(s: &TcpStream, clock: &Clock) {
    // Bounded reads keep a stalled peer from hanging the join; a failure to
    // set them only loses that bound.
    let t = clock
        .left()
        .unwrap_or(Duration::from_millis(1))
        .min(Duration::from_secs(30));
    let _ = s.set_read_timeout(Some(t));
    let _ = s.set_write_timeout(Some(t));
    // The handshakes are several small writes each way: with Nagle on, each
    // waits out the peer's delayed ACK (40 ms), and rank 0 accepts one
    // connection after another, so a 4-rank join took 0.4 s.
    let _ = s.set_nodelay(true);
}

/// A peer listener on `ip`, port chosen by the kernel. Non-blocking, so one
/// poll can wait on several.
fn listen(rank: usize, ip: IpAddr) -> Result<TcpListener> {
    let l = TcpListener::bind((ip, 0)).map_err(io_err(rank, format!("listening on {ip}")))?;
    tcp::tune_listener(&l);
    l.set_nonblocking(true)
        .map_err(io_err(rank, format!("listening on {ip}")))?;
    Ok(l)
}

fn unspecified(v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    }
}

/// For `Config::addresses`: one listener on the wildcard address of each
/// family in the list, and the list with each address given the port of
/// its family's listener.
fn listen_on_all(rank: usize, addresses: &[IpAddr]) -> Result<(Vec<TcpListener>, Vec<SocketAddr>)> {
    let mut listeners = Vec::new();
    let mut ports: [Option<u16>; 2] = [None, None];
    let mut advertised = Vec::with_capacity(addresses.len());
    for ip in addresses {
        let family = usize::from(ip.is_ipv6());
        let port = match ports[family] {
            Some(p) => p,
            None => {
                let l = listen(rank, unspecified(ip.is_ipv4()))?;
                let p = l
                    .local_addr()
                    .map_err(io_err(rank, "peer listener".into()))?
                    .port();
                listeners.push(l);
                ports[family] = Some(p);
                p
            }
        };
        advertised.push(SocketAddr::new(*ip, port));
    }
    Ok((listeners, advertised))
}

/// Rank 0: accept one registration per rank, check them, send the table.
fn coordinate(
    cfg: &Config,
    coord: &[SocketAddr],
    clock: &Clock,
) -> Result<(Vec<TcpListener>, Vec<Vec<SocketAddr>>, Tuning)> {
    let me = cfg.rank;
    let server = coord
        .iter()
        .find_map(|a| TcpListener::bind(a).ok())
        .ok_or_else(|| {
            CommError::Config(format!(
                "rank 0 cannot listen on the coordinator address {}",
                cfg.coordinator
            ))
        })?;
    server
        .set_nonblocking(true)
        .map_err(io_err(me, "coordinator listener".into()))?;
    let (peers, mine) = if cfg.addresses.is_empty() {
        let ip = server
            .local_addr()
            .map_err(io_err(me, "coordinator address".into()))?
            .ip();
        let l = listen(me, ip)?;
        let addr = l.local_addr().map_err(io_err(me, "peer listener".into()))?;
        (vec![l], vec![addr])
    } else {
        listen_on_all(me, &cfg.addresses)?
    };
    let mut table: Vec<Option<Vec<SocketAddr>>> = vec![None; cfg.world_size];
    table[0] = Some(mine);
    let mut streams = Vec::new();
    let mut refused = 0usize;
    while table.iter().any(Option::is_none) {
        let (mut s, from) = match accept_until(std::slice::from_ref(&server), clock) {
            Some(r) => r,
            None => {
                let missing: Vec<String> = (0..cfg.world_size)
                    .filter(|r| table[*r].is_none())
                    .map(|r| r.to_string())
                    .collect();
                return Err(CommError::JoinTimeout {
                    rank: me,
                    what: format!(
                        "rank(s) {} did not join the coordinator at {}",
                        missing.join(", "),
                        cfg.coordinator
                    ),
                    secs: cfg.join_timeout.as_secs(),
                    detail: if refused > 0 {
                        format!(
                            "; {refused} connection(s) were refused for a wrong job token or protocol"
                        )
                    } else {
                        String::new()
                    },
                });
            }
        };
        set_deadline(&s, clock);
        if let Err(f) = auth::accept(&mut s, &cfg.token) {
            tracing::warn!("coordinator: refused a connection from {from}: {f}");
            refused += 1;
            continue;
        }
        let body =
            read_msg(&mut s).map_err(io_err(me, format!("reading a registration from {from}")))?;
        let reg = decode_registration(&body)
            .ok_or_else(|| CommError::Bootstrap(format!("malformed registration from {from}")))?;
        let problem = if reg.version != VERSION {
            Some(format!(
                "rank {} runs `{}` but rank 0 runs `{VERSION}`",
                reg.rank, reg.version
            ))
        } else if reg.world_size != cfg.world_size {
            Some(format!(
                "rank {} has world size {} but rank 0 has world size {}",
                reg.rank, reg.world_size, cfg.world_size
            ))
        } else if reg.rank >= cfg.world_size {
            Some(format!(
                "rank {} is out of range for world size {}",
                reg.rank, cfg.world_size
            ))
        } else if reg.addrs.is_empty() {
            Some(format!("rank {} registered no address", reg.rank))
        } else if table[reg.rank].is_some() {
            Some(format!(
                "rank {} joined twice (the second from {from})",
                reg.rank
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            let mut e = Encoder::default();
            e.u8(0).str(&p);
            let _ = write_msg(&mut s, &e.0);
            return Err(CommError::Bootstrap(p));
        }
        table[reg.rank] = Some(reg.addrs);
        streams.push(s);
    }
    let table: Vec<Vec<SocketAddr>> = table.into_iter().map(Option::unwrap_or_default).collect();
    let tuning = Tuning {
        algo: cfg.algo,
        conns_per_peer: cfg.conns_per_peer,
        piece_bytes: cfg.piece_bytes,
        shm: cfg.shm,
    };
    let msg = encode_table(&table, &tuning);
    for mut s in streams {
        let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        write_msg(&mut s, &msg).map_err(io_err(me, format!("sending the table to {peer}")))?;
    }
    Ok((peers, table, tuning))
}

/// The next connection on any of `ls` (non-blocking listeners), or `None`
/// once the clock runs out.
fn accept_until(ls: &[TcpListener], clock: &Clock) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let left = clock.left()?;
        if !tcp::wait_readable(ls, left) {
            continue;
        }
        for l in ls {
            if let Ok(r) = l.accept() {
                let _ = r.0.set_nonblocking(false);
                return Some(r);
            }
        }
    }
}

struct Registration {
    rank: usize,
    world_size: usize,
    version: String,
    addrs: Vec<SocketAddr>,
}

fn decode_registration(body: &[u8]) -> Option<Registration> {
    let mut d = Decoder::new(body);
    let rank = d.u32()? as usize;
    let world_size = d.u32()? as usize;
    let version = d.str()?;
    let n = d.u8()?;
    let addrs = (0..n)
        .map(|_| d.str()?.parse().ok())
        .collect::<Option<Vec<SocketAddr>>>()?;
    Some(Registration {
        rank,
        world_size,
        version,
        addrs,
    })
}

fn encode_table(table: &[Vec<SocketAddr>], t: &Tuning) -> Vec<u8> {
    let mut e = Encoder::default();
    e.u8(1)
        .u8(t.algo.code())
        .u8(t.conns_per_peer as u8)
        .u64(t.piece_bytes as u64)
        .u8(u8::from(t.shm));
    e.u32(table.len() as u32);
    for addrs in table {
        e.u8(addrs.len() as u8);
        for a in addrs {
            e.str(&a.to_string());
        }
    }
    e.0
}

fn decode_table(body: &[u8]) -> std::result::Result<(Vec<Vec<SocketAddr>>, Tuning), String> {
    let mut d = Decoder::new(body);
    match d.u8() {
        Some(1) => {}
        Some(0) => return Err(d.str().unwrap_or_else(|| "refused".into())),
        _ => return Err("malformed table".into()),
    }
    let mut parse = || -> Option<(Vec<Vec<SocketAddr>>, Tuning)> {
        let algo = Algo::from_code(d.u8()?);
        let conns_per_peer = (d.u8()? as usize).max(1);
        let piece_bytes = (d.u64()? as usize).max(64);
        let shm = d.u8()? == 1;
        let n = d.u32()? as usize;
        let mut table = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let k = d.u8()?;
            table.push(
                (0..k)
                    .map(|_| d.str()?.parse().ok())
                    .collect::<Option<Vec<SocketAddr>>>()?,
            );
        }
        Some((
            table,
            Tuning {
                algo,
                conns_per_peer,
                piece_bytes,
                shm,
            },
        ))
    };
    parse().ok_or_else(|| "malformed table".into())
}

/// Ranks other than 0: register with the coordinator (retrying until it is
/// up) and receive the table.
fn register(
    cfg: &Config,
    coord: &[SocketAddr],
    clock: &Clock,
) -> Result<(Vec<TcpListener>, Vec<Vec<SocketAddr>>, Tuning)> {
    let me = cfg.rank;
    // Without configured addresses the rank advertises the one its
    // connection to the coordinator leaves from, known only once connected.
    let (listeners, configured) = if cfg.addresses.is_empty() {
        (vec![listen(me, unspecified(coord[0].is_ipv4()))?], None)
    } else {
        let (l, advertised) = listen_on_all(me, &cfg.addresses)?;
        (l, Some(advertised))
    };
    let mut backoff = Duration::from_millis(20);
    let mut last_error = String::from("no attempt");
    let mut s = loop {
        let Some(left) = clock.left() else {
            return Err(CommError::JoinTimeout {
                rank: me,
                what: format!(
                    "could not reach the coordinator (rank 0) at {}",
                    cfg.coordinator
                ),
                secs: cfg.join_timeout.as_secs(),
                detail: format!("; last error: {last_error}"),
            });
        };
        match coord.iter().find_map(|a| {
            TcpStream::connect_timeout(a, left.min(Duration::from_secs(5)))
                .map_err(|e| last_error = e.to_string())
                .ok()
        }) {
            Some(s) => break s,
            None => {
                std::thread::sleep(backoff.min(left));
                // Rank 0 often starts last (its ssh session is no faster
                // than the others'), and every millisecond waited past its
                // start delays the whole job; a refused connect is cheap.
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
        }
    };
    set_deadline(&s, clock);
    let coord_name = format!("the coordinator (rank 0) at {}", cfg.coordinator);
    auth::connect(&mut s, &cfg.token).map_err(|f| auth_err(me, coord_name.clone(), f))?;
    let advertised = match configured {
        Some(a) => a,
        None => {
            let ip = s
                .local_addr()
                .map_err(io_err(me, "local address".into()))?
                .ip();
            let port = listeners[0]
                .local_addr()
                .map_err(io_err(me, "peer listener".into()))?
                .port();
            vec![SocketAddr::new(ip, port)]
        }
    };
    let mut e = Encoder::default();
    e.u32(me as u32)
        .u32(cfg.world_size as u32)
        .str(VERSION)
        .u8(advertised.len() as u8);
    for a in &advertised {
        e.str(&a.to_string());
    }
    write_msg(&mut s, &e.0).map_err(io_err(me, format!("registering with {coord_name}")))?;
    let body = read_msg(&mut s).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            CommError::JoinTimeout {
                rank: me,
                what: "the other ranks did not all join".into(),
                secs: cfg.join_timeout.as_secs(),
                detail: String::new(),
            }
        } else {
            CommError::io(
                me,
                format!("waiting for the address table from {coord_name}"),
                e,
            )
        }
    })?;
    let (table, tuning) = decode_table(&body)
        .map_err(|reason| CommError::Bootstrap(format!("rank 0 refused rank {me}: {reason}")))?;
    if table.len() != cfg.world_size {
        return Err(CommError::Bootstrap(format!(
            "rank 0 sent a table of {} ranks but rank {me} has world size {}",
            table.len(),
            cfg.world_size
        )));
    }
    Ok((listeners, table, tuning))
}

/// Dial every lower rank on each of its addresses, then accept every higher
/// rank. Rank 0 only accepts, so by induction nobody waits in a cycle.
fn connect_peers(
    cfg: &Config,
    listeners: &[TcpListener],
    table: &[Vec<SocketAddr>],
    conns_per_peer: usize,
    clock: &Clock,
) -> Result<Vec<(usize, TcpStream)>> {
    let me = cfg.rank;
    let mut conns = Vec::new();
    for (peer, addrs) in table.iter().enumerate().take(me) {
        for addr in addrs {
            for index in 0..conns_per_peer {
                let left = clock.left().ok_or_else(|| CommError::JoinTimeout {
                    rank: me,
                    what: format!("could not connect to rank {peer}"),
                    secs: cfg.join_timeout.as_secs(),
                    detail: String::new(),
                })?;
                let mut s = TcpStream::connect_timeout(addr, left)
                    .map_err(io_err(me, format!("connecting to rank {peer} at {addr}")))?;
                set_deadline(&s, clock);
                auth::connect(&mut s, &cfg.token)
                    .map_err(|f| auth_err(me, format!("rank {peer} at {addr}"), f))?;
                let mut e = Encoder::default();
                e.u32(me as u32)
                    .u32(cfg.world_size as u32)
                    .u32(index as u32);
                write_msg(&mut s, &e.0).map_err(io_err(me, format!("greeting rank {peer}")))?;
                conns.push((peer, s));
            }
        }
    }
    let per_higher = table[me].len() * conns_per_peer;
    let mut from_higher = vec![0usize; cfg.world_size];
    let mut expected = (cfg.world_size - 1 - me) * per_higher;
    while expected > 0 {
        let Some((mut s, from)) = accept_until(listeners, clock) else {
            let missing: Vec<String> = (me + 1..cfg.world_size)
                .filter(|r| from_higher[*r] < per_higher)
                .map(|r| r.to_string())
                .collect();
            return Err(CommError::JoinTimeout {
                rank: me,
                what: format!(
                    "rank(s) {} did not connect to rank {me}",
                    missing.join(", ")
                ),
                secs: cfg.join_timeout.as_secs(),
                detail: String::new(),
            });
        };
        set_deadline(&s, clock);
        if let Err(f) = auth::accept(&mut s, &cfg.token) {
            tracing::warn!("rank {me}: refused a peer connection from {from}: {f}");
            continue;
        }
        let Ok(body) = read_msg(&mut s) else { continue };
        let mut d = Decoder::new(&body);
        let (Some(peer), Some(world)) = (d.u32().map(|r| r as usize), d.u32().map(|w| w as usize))
        else {
            continue;
        };
        if world != cfg.world_size
            || peer <= me
            || peer >= cfg.world_size
            || from_higher[peer] >= per_higher
        {
            return Err(CommError::Bootstrap(format!(
                "rank {me} got an unexpected connection claiming rank {peer} of world size {world} from {from}"
            )));
        }
        from_higher[peer] += 1;
        expected -= 1;
        conns.push((peer, s));
    }
    Ok(conns)
}

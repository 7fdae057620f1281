//! Ranks that advertise several addresses (`HUDDLE_ADDRS`): every peer
//! opens its set of connections to each address, and large messages stripe
//! over all of them. Each rank inspects its own sockets to prove it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::mem::ManuallyDrop;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, RawFd};
use std::time::Duration;

use common::{SCENARIO, env, finish, launch, run_ok};
use huddle_comm::{CommError, Group};

const CONNS_PER_PEER: usize = 2;
const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
/// Small pieces, so one collective makes many frames to stripe, yet above
/// the engine's inline size (frames up to 64 KiB go on a peer's first
/// connection, where its receiver reads them itself).
const PIECE_BYTES: usize = 256 << 10;

// ---------------------------------------------------------------- worker

#[test]
fn rank_worker() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let result = huddle_comm::init_strict().and_then(|g| match scenario.as_str() {
        "striped" => striped(&g),
        other => panic!("unknown scenario {other}"),
    });
    match result {
        Ok(()) => {
            println!("SCENARIO OK");
            std::process::exit(0)
        }
        Err(e) => {
            println!("ERROR: {e}");
            std::process::exit(3)
        }
    }
}

fn wrong(what: String) -> CommError {
    CommError::InvalidArgument(format!("WRONG RESULT: {what}"))
}

fn striped(g: &Group) -> Result<(), CommError> {
    let (me, n) = (g.rank(), g.size());
    let len = 1 << 20;
    let mut v: Vec<f32> = (0..len).map(|i| (i % 97) as f32 + me as f32).collect();
    g.all_sum(&mut v)?;
    let extra = (n * (n - 1) / 2) as f32;
    if let Some(i) = (0..len).find(|&i| v[i] != (i % 97) as f32 * n as f32 + extra) {
        return Err(wrong(format!("all_sum element {i} is {}", v[i])));
    }
    let part: Vec<i64> = (0..len / 4).map(|i| (i * n + me) as i64).collect();
    let mut all = vec![0i64; part.len() * n];
    g.all_gather(&part, &mut all)?;
    for (r, chunk) in all.chunks(part.len()).enumerate() {
        if let Some(i) = (0..chunk.len()).find(|&i| chunk[i] != (i * n + r) as i64) {
            return Err(wrong(format!("all_gather rank {r} element {i}")));
        }
    }
    let checked = check_connections(n);
    // A rank that exits closes its connections, and its peers then drop
    // theirs: keep every rank here until all have looked at their sockets.
    g.barrier()?;
    checked
}

/// One of this process's TCP sockets.
struct Socket {
    local: SocketAddr,
    remote: Option<SocketAddr>,
    /// Bytes sent and acknowledged plus bytes received.
    carried: u64,
}

fn sockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, out: &mut T) -> bool {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `out` is a writable T and `len` its size.
    unsafe { libc::getsockopt(fd, level, name, (out as *mut T).cast(), &mut len) == 0 }
}

fn tcp_sockets() -> Vec<Socket> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        let (mut kind, mut domain) = (0 as libc::c_int, 0 as libc::c_int);
        if !sockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, &mut kind)
            || !sockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN, &mut domain)
            || kind != libc::SOCK_STREAM
            || (domain != libc::AF_INET && domain != libc::AF_INET6)
        {
            continue;
        }
        // SAFETY: a TCP socket the group owns; ManuallyDrop leaves it open.
        let s = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        let Ok(local) = s.local_addr() else { continue };
        // SAFETY: an all-zero tcp_info is valid plain data.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let carried = if sockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info) {
            info.tcpi_bytes_acked + info.tcpi_bytes_received
        } else {
            0
        };
        found.push(Socket {
            local,
            remote: s.peer_addr().ok(),
            carried,
        });
    }
    found
}

/// Every advertised address of every peer carries its own set of
/// connections, and each of them carried a share of the data.
fn check_connections(n: usize) -> Result<(), CommError> {
    // The engine may hold a socket under two descriptors: count it once.
    let mut seen = BTreeSet::new();
    let sockets: Vec<Socket> = tcp_sockets()
        .into_iter()
        .filter(|s| seen.insert((s.local, s.remote)))
        .collect();
    let mut per_address: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for s in &sockets {
        let Some(remote) = s.remote else { continue };
        // The address a connection was made to. Linux's route for 127/8
        // picks the source 127.0.0.1 for any loopback destination, so of two
        // different ends, the dialed one is the other.
        let target = if s.local.ip() == remote.ip() || s.local.ip() == LOOPBACK {
            remote.ip()
        } else {
            s.local.ip()
        };
        *per_address.entry(target).or_default() += 1;
        if s.carried < PIECE_BYTES as u64 {
            return Err(wrong(format!(
                "the connection {} -> {remote} carried only {} bytes: striping skipped it",
                s.local, s.carried
            )));
        }
    }
    let advertised: Vec<IpAddr> = std::env::var("HUDDLE_ADDRS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|a| a.parse().ok())
        .collect();
    let want: BTreeMap<IpAddr, usize> = advertised
        .iter()
        .map(|a| (*a, (n - 1) * CONNS_PER_PEER))
        .collect();
    if per_address != want {
        return Err(wrong(format!(
            "connections per address {per_address:?}, expected {want:?}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------- tests

fn advertising(addrs: &'static str) -> impl Fn(usize) -> Vec<(String, String)> {
    move |_| {
        env(&[
            ("HUDDLE_ADDRS", addrs),
            ("HUDDLE_CONNS_PER_PEER", "2"),
            ("HUDDLE_PIECE_BYTES", "262144"),
            ("HUDDLE_ALGO", "ring"),
            // Striping is a TCP matter: same-host ranks would use shared memory.
            ("HUDDLE_SHM", "0"),
        ])
    }
}

#[test]
fn two_ranks_connect_and_stripe_over_both_addresses() {
    run_ok("striped", 2, advertising("127.0.0.1,127.0.0.2"));
}

#[test]
fn three_ranks_connect_and_stripe_over_both_addresses() {
    run_ok("striped", 3, advertising("127.0.0.1,127.0.0.2"));
}

#[test]
fn ipv4_and_ipv6_addresses_mix() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    run_ok("striped", 2, advertising("127.0.0.1,::1"));
}

#[test]
fn bad_address_list_is_an_error_naming_the_variable_and_entry() {
    let ranks = launch("striped", 2, |_| {
        env(&[("HUDDLE_ADDRS", "127.0.0.1,not-an-ip")])
    });
    for (r, (code, out)) in finish(ranks, Duration::from_secs(120)).iter().enumerate() {
        assert_eq!(*code, Some(3), "rank {r}:\n{out}");
        assert!(
            out.contains("HUDDLE_ADDRS") && out.contains("not-an-ip"),
            "rank {r}:\n{out}"
        );
    }
}

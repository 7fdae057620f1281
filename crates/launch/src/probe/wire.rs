//! The probe protocol: a tiny TCP server on every host, and a client that
//! measures one address of another host.
//!
//! The server greets each connection with `HUDDLE-PROBE <host id>\n`, so
//! the client knows which host it reached. Then the client sends commands:
//! `P` + u32 n: n one-byte ping-pongs (round trip); `B`: bulk bytes until
//! the client shuts its side, answered with the u64 count (bandwidth).

use std::ffi::CString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV6, TcpListener, TcpStream,
};
use std::time::{Duration, Instant};

const GREETING: &str = "HUDDLE-PROBE ";
/// Only a guard against a peer that vanished mid-probe.
const IO_GUARD: Duration = Duration::from_secs(30);
const PINGS: u32 = 200;
const WARMUP_PINGS: u32 = 10;
const BULK_CHUNK: usize = 1 << 20;

/// One address of one host, as the client on another host dials it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The host id its probe server must greet with.
    pub id: String,
    /// An IP address; IPv6 link-local with `%interface` of the dialling host.
    pub addr: String,
    pub port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeTargetError {
    #[error("probe target {0:?}: expected ID,ADDRESS,PORT")]
    Form(String),
    #[error("probe target {0:?}: not an IP address")]
    Address(String),
    #[error("probe target {0:?}: no interface {1:?} here")]
    Interface(String, String),
}

impl ProbeTarget {
    /// `ID,ADDRESS,PORT`.
    pub fn parse(s: &str) -> Result<Self, ProbeTargetError> {
        let form = || ProbeTargetError::Form(s.to_owned());
        let (id, rest) = s.split_once(',').ok_or_else(form)?;
        let (addr, port) = rest.rsplit_once(',').ok_or_else(form)?;
        let port = port.parse().map_err(|_| form())?;
        if id.is_empty() {
            return Err(form());
        }
        Ok(ProbeTarget {
            id: id.to_owned(),
            addr: addr.to_owned(),
            port,
        })
    }

    pub fn to_arg(&self) -> String {
        format!("{},{},{}", self.id, self.addr, self.port)
    }

    fn socket_addr(&self) -> Result<SocketAddr, ProbeTargetError> {
        let (ip, scope) = match self.addr.split_once('%') {
            Some((ip, scope)) => (ip, Some(scope)),
            None => (self.addr.as_str(), None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| ProbeTargetError::Address(self.addr.clone()))?;
        match (ip, scope) {
            (IpAddr::V6(v6), Some(ifname)) => {
                let index = interface_index(ifname)
                    .ok_or_else(|| ProbeTargetError::Interface(self.to_arg(), ifname.to_owned()))?;
                Ok(SocketAddr::V6(SocketAddrV6::new(v6, self.port, 0, index)))
            }
            (ip, _) => Ok(SocketAddr::new(ip, self.port)),
        }
    }
}

fn interface_index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// What one probe found, as the client prints it (one JSON object a line).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TargetResult {
    pub target: String,
    /// Set when the target answered as the expected host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<Measurement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measurement {
    /// Median TCP round trip, microseconds (0 when only reachability was asked).
    pub rtt_us: f64,
    /// Bulk TCP throughput, Gbit/s (0 when only reachability was asked).
    pub gbps: f64,
}

/// Serves probes on every address until `stop` returns (the controller
/// closing our stdin); `announce` gets the port first.
pub fn serve_probe(
    id: &str,
    announce: impl FnOnce(u16) -> io::Result<()>,
    stop: impl FnOnce(),
) -> io::Result<()> {
    // One dual-stack socket when IPv6 exists, so link-local peers reach it.
    let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
    announce(listener.local_addr()?.port())?;
    let id = id.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let id = id.clone();
            std::thread::spawn(move || {
                if let Err(e) = serve_one(stream, &id) {
                    tracing::debug!("probe connection: {e}");
                }
            });
        }
    });
    stop();
    Ok(())
}

fn serve_one(mut stream: TcpStream, id: &str) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_GUARD))?;
    stream.write_all(format!("{GREETING}{id}\n").as_bytes())?;
    let mut command = [0u8; 1];
    loop {
        if stream.read(&mut command)? == 0 {
            return Ok(());
        }
        match command[0] {
            b'P' => {
                let mut n = [0u8; 4];
                stream.read_exact(&mut n)?;
                let mut byte = [0u8; 1];
                for _ in 0..u32::from_le_bytes(n) {
                    stream.read_exact(&mut byte)?;
                    stream.write_all(&byte)?;
                }
            }
            b'B' => {
                let mut buf = vec![0u8; BULK_CHUNK];
                let mut total = 0u64;
                loop {
                    let n = stream.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                stream.write_all(&total.to_le_bytes())?;
                return Ok(());
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown probe command {other:#x}"),
                ));
            }
        }
    }
}

/// Connects and checks the greeting names the expected host.
fn connect(target: &ProbeTarget, timeout: Duration) -> Result<TcpStream, String> {
    let addr = target.socket_addr().map_err(|e| e.to_string())?;
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(IO_GUARD))
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .take(256)
        .read_line(&mut line)
        .map_err(|e| format!("no greeting: {e}"))?;
    match line.trim_end().strip_prefix(GREETING) {
        Some(id) if id == target.id => Ok(stream),
        Some(id) => Err(format!("reached host {id}, not {}", target.id)),
        None => Err(format!(
            "not a huddle probe server (said {:?})",
            line.trim_end()
        )),
    }
}

/// Only whether `target` answers as its host.
pub fn reach_target(target: &ProbeTarget, timeout: Duration) -> TargetResult {
    let outcome = connect(target, timeout).map(|_| Measurement {
        rtt_us: 0.0,
        gbps: 0.0,
    });
    result(target, outcome)
}

/// Round trip (median of small ping-pongs) and bandwidth (a bulk transfer
/// of about `bulk` long).
pub fn measure_target(target: &ProbeTarget, timeout: Duration, bulk: Duration) -> TargetResult {
    let outcome = connect(target, timeout).and_then(|mut stream| {
        let rtt_us = round_trip(&mut stream).map_err(|e| format!("round trip: {e}"))?;
        let gbps = bandwidth(&mut stream, bulk).map_err(|e| format!("bandwidth: {e}"))?;
        Ok(Measurement { rtt_us, gbps })
    });
    result(target, outcome)
}

/// Every target: only reachability (all at once, so unanswered ones wait
/// out their timeouts together) when `bulk` is `None`, else a full
/// measurement of each in turn (so transfers do not share the links).
pub fn probe_all(
    targets: &[ProbeTarget],
    timeout: Duration,
    bulk: Option<Duration>,
) -> Vec<TargetResult> {
    match bulk {
        Some(bulk) => targets
            .iter()
            .map(|t| measure_target(t, timeout, bulk))
            .collect(),
        None => std::thread::scope(|scope| {
            let handles: Vec<_> = targets
                .iter()
                .map(|t| scope.spawn(move || reach_target(t, timeout)))
                .collect();
            handles
                .into_iter()
                .zip(targets)
                .map(|(h, t)| {
                    h.join()
                        .unwrap_or_else(|_| result(t, Err("probe thread panicked".to_owned())))
                })
                .collect()
        }),
    }
}

fn result(target: &ProbeTarget, outcome: Result<Measurement, String>) -> TargetResult {
    let (measured, error) = match outcome {
        Ok(m) => (Some(m), None),
        Err(e) => (None, Some(e)),
    };
    TargetResult {
        target: target.to_arg(),
        measured,
        error,
    }
}

fn round_trip(stream: &mut TcpStream) -> io::Result<f64> {
    let total = WARMUP_PINGS + PINGS;
    stream.write_all(b"P")?;
    stream.write_all(&total.to_le_bytes())?;
    let mut samples = Vec::with_capacity(PINGS as usize);
    let mut byte = [0u8; 1];
    for i in 0..total {
        let start = Instant::now();
        stream.write_all(&[i as u8])?;
        stream.read_exact(&mut byte)?;
        if i >= WARMUP_PINGS {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn bandwidth(stream: &mut TcpStream, duration: Duration) -> io::Result<f64> {
    stream.write_all(b"B")?;
    let chunk = vec![0x5au8; BULK_CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        stream.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count)?;
    let seconds = start.elapsed().as_secs_f64();
    let received = u64::from_le_bytes(count);
    if received != sent {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sent {sent} bytes, the server counted {received}"),
        ));
    }
    Ok(received as f64 * 8.0 / seconds / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A probe server on this machine, stopped when the sender drops.
    fn server(id: &str) -> (u16, mpsc::Sender<()>) {
        let (port_tx, port_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let id = id.to_owned();
        std::thread::spawn(move || {
            let announce = |port| port_tx.send(port).map_err(io::Error::other);
            let _ = serve_probe(&id, announce, || {
                let _ = stop_rx.recv();
            });
        });
        (port_rx.recv().unwrap(), stop_tx)
    }

    fn target(id: &str, addr: &str, port: u16) -> ProbeTarget {
        ProbeTarget {
            id: id.into(),
            addr: addr.into(),
            port,
        }
    }

    #[test]
    fn measures_round_trip_and_bandwidth_over_loopback() {
        let (port, _stop) = server("h7");
        let r = measure_target(
            &target("h7", "127.0.0.1", port),
            Duration::from_secs(5),
            Duration::from_millis(50),
        );
        let m = r.measured.unwrap_or_else(|| panic!("{:?}", r.error));
        assert!(m.rtt_us > 0.0 && m.gbps > 0.0, "{m:?}");
    }

    #[test]
    fn reaching_the_wrong_host_is_not_a_link() {
        let (port, _stop) = server("h1");
        let r = reach_target(&target("h2", "127.0.0.1", port), Duration::from_secs(5));
        assert_eq!(r.error.as_deref(), Some("reached host h1, not h2"));
        assert!(r.measured.is_none());
    }

    #[test]
    fn nobody_listening_is_an_error_not_a_hang() {
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let r = reach_target(&target("h1", "127.0.0.1", port), Duration::from_secs(5));
        assert!(r.error.is_some());
    }

    #[test]
    fn link_local_targets_resolve_their_interface() {
        let t = target("h1", "fe80::1%lo", 9);
        assert!(matches!(t.socket_addr(), Ok(SocketAddr::V6(a)) if a.scope_id() != 0));
        let t = target("h1", "fe80::1%no-such-if", 9);
        assert!(matches!(
            t.socket_addr(),
            Err(ProbeTargetError::Interface(..))
        ));
    }

    #[test]
    fn targets_parse_and_print_back() {
        let t = ProbeTarget::parse("h1,fe80::1%eth1,4000").unwrap();
        assert_eq!(t, target("h1", "fe80::1%eth1", 4000));
        assert_eq!(ProbeTarget::parse(&t.to_arg()).unwrap(), t);
        assert!(ProbeTarget::parse("h1,10.0.0.1").is_err());
        assert!(ProbeTarget::parse(",10.0.0.1,5").is_err());
        assert!(ProbeTarget::parse("h1,10.0.0.1,x").is_err());
    }
}

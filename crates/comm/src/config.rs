//! What a rank needs to join a job: its place in it, where rank 0 is, the
//! job's secret, and tuning knobs. Filled from the environment (`env`) or
//! by [`GroupBuilder`].

use std::net::IpAddr;
use std::time::Duration;

use crate::error::{CommError, Result};
use crate::group::Group;

/// Which collective algorithm to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    /// Chunked, pipelined ring (bandwidth).
    Ring,
    /// One direct exchange with every peer (latency).
    Mesh,
    /// Chosen per call from the message size; rank 0 measures the
    /// switch-over size at init and tells the others.
    Auto,
}

impl Algo {
    pub(crate) fn code(self) -> u8 {
        match self {
            Algo::Ring => 1,
            Algo::Mesh => 2,
            Algo::Auto => 0,
        }
    }

    pub(crate) fn from_code(c: u8) -> Algo {
        match c {
            1 => Algo::Ring,
            2 => Algo::Mesh,
            _ => Algo::Auto,
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Algo> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ring" => Some(Algo::Ring),
            "mesh" => Some(Algo::Mesh),
            "auto" | "" => Some(Algo::Auto),
            _ => None,
        }
    }
}

/// Largest supported world size; tags and tables are sized for it.
pub const MAX_WORLD_SIZE: usize = 1024;

/// Default pipeline unit of the ring, in bytes.
pub const DEFAULT_PIECE_BYTES: usize = 1 << 20;

/// Everything one rank needs to join a job.
#[derive(Clone)]
pub struct Config {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_size: usize,
    /// `host:port` where rank 0 listens (IPv4, `[v6]:port`, or hostname).
    pub coordinator: String,
    /// The job's shared secret (decoded from hex).
    pub token: Vec<u8>,
    /// Used by rank 0 only; everyone runs what rank 0 picked.
    pub algo: Algo,
    pub peer_timeout: Duration,
    pub join_timeout: Duration,
    /// Used by rank 0 only: TCP connections per peer address.
    pub conns_per_peer: usize,
    /// Used by rank 0 only: ring pipeline unit.
    pub piece_bytes: usize,
    /// Addresses this rank advertises to its peers, each getting its own
    /// set of `conns_per_peer` connections. Empty: the one address that
    /// reaches the coordinator.
    pub addresses: Vec<IpAddr>,
    /// Used by rank 0 only: ranks on one host exchange data through shared
    /// memory (`HUDDLE_SHM`, on by default).
    pub shm: bool,
    /// Overrides what identifies this rank's host for shared memory
    /// (`HUDDLE_SHM_HOST_KEY`; tests fake hosts with it).
    pub shm_host_key: Option<String>,
}

impl std::fmt::Debug for Config {
    // The token is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("coordinator", &self.coordinator)
            .field("algo", &self.algo)
            .field("peer_timeout", &self.peer_timeout)
            .field("conns_per_peer", &self.conns_per_peer)
            .field("addresses", &self.addresses)
            .field("shm", &self.shm)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.world_size == 0 || self.world_size > MAX_WORLD_SIZE {
            return Err(CommError::Config(format!(
                "world size {} is outside 1..={MAX_WORLD_SIZE}",
                self.world_size
            )));
        }
        if self.rank >= self.world_size {
            return Err(CommError::Config(format!(
                "rank {} is out of range for world size {}",
                self.rank, self.world_size
            )));
        }
        if self.world_size > 1 && self.token.is_empty() {
            return Err(CommError::Config("the job token is empty".into()));
        }
        if self.conns_per_peer == 0 || self.conns_per_peer > 16 {
            return Err(CommError::Config(format!(
                "connections per peer must be 1..=16, not {}",
                self.conns_per_peer
            )));
        }
        if self.piece_bytes < 64 {
            return Err(CommError::Config(format!(
                "piece size {} is below 64 bytes",
                self.piece_bytes
            )));
        }
        if self.addresses.len() > MAX_ADDRESSES {
            return Err(CommError::Config(format!(
                "rank {} advertises {} addresses, more than {MAX_ADDRESSES}",
                self.rank,
                self.addresses.len()
            )));
        }
        if let Some(a) = self
            .addresses
            .iter()
            .find(|a| a.is_unspecified() || a.is_multicast())
        {
            return Err(CommError::Config(format!(
                "rank {} cannot advertise {a}: peers cannot connect to it",
                self.rank
            )));
        }
        Ok(())
    }
}

/// Most addresses one rank may advertise (the table stores a count byte,
/// and each address multiplies the connections of every peer).
pub(crate) const MAX_ADDRESSES: usize = 16;

/// Decodes the job token from hex.
pub fn parse_token_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Explicit setup of a group, for tests and for embedding huddle-comm.
///
/// ```no_run
/// let group = huddle_comm::GroupBuilder::new(0, 2, "127.0.0.1:29500", b"secret")
///     .build()?;
/// # Ok::<(), huddle_comm::CommError>(())
/// ```
#[derive(Debug, Clone)]
pub struct GroupBuilder {
    config: Config,
}

impl GroupBuilder {
    pub fn new(
        rank: usize,
        world_size: usize,
        coordinator: impl Into<String>,
        token: &[u8],
    ) -> Self {
        GroupBuilder {
            config: Config {
                rank,
                world_size,
                local_rank: 0,
                local_size: 1,
                coordinator: coordinator.into(),
                token: token.to_vec(),
                algo: Algo::Auto,
                peer_timeout: Duration::from_secs(30),
                join_timeout: Duration::from_secs(60),
                conns_per_peer: 2,
                piece_bytes: DEFAULT_PIECE_BYTES,
                addresses: Vec::new(),
                shm: true,
                shm_host_key: None,
            },
        }
    }

    /// Starts from a full configuration (e.g. one read from the environment).
    pub fn from_config(config: Config) -> Self {
        GroupBuilder { config }
    }

    pub fn local(mut self, local_rank: usize, local_size: usize) -> Self {
        self.config.local_rank = local_rank;
        self.config.local_size = local_size;
        self
    }

    pub fn algo(mut self, algo: Algo) -> Self {
        self.config.algo = algo;
        self
    }

    pub fn peer_timeout(mut self, t: Duration) -> Self {
        self.config.peer_timeout = t;
        self
    }

    pub fn join_timeout(mut self, t: Duration) -> Self {
        self.config.join_timeout = t;
        self
    }

    pub fn conns_per_peer(mut self, n: usize) -> Self {
        self.config.conns_per_peer = n;
        self
    }

    pub fn piece_bytes(mut self, n: usize) -> Self {
        self.config.piece_bytes = n;
        self
    }

    /// The addresses this rank advertises (see [`Config::addresses`]);
    /// duplicates are dropped, keeping the first.
    pub fn addresses(mut self, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut kept: Vec<IpAddr> = Vec::new();
        for a in addrs {
            if !kept.contains(&a) {
                kept.push(a);
            }
        }
        self.config.addresses = kept;
        self
    }

    /// Whether same-host ranks use shared memory (rank 0's choice counts).
    pub fn shm(mut self, on: bool) -> Self {
        self.config.shm = on;
        self
    }

    /// Ranks with equal keys count as one host for shared memory, in place
    /// of the boot id, network namespace and hostname (for tests).
    pub fn shm_host_key(mut self, key: impl Into<String>) -> Self {
        self.config.shm_host_key = Some(key.into());
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Joins the job: blocks until every rank is connected.
    pub fn build(self) -> Result<Group> {
        Group::connect(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hex_decodes_and_rejects_garbage() {
        assert_eq!(parse_token_hex("00ff1A"), Some(vec![0, 255, 26]));
        assert_eq!(parse_token_hex("abc"), None);
        assert_eq!(parse_token_hex("zz"), None);
        assert_eq!(parse_token_hex(""), None);
    }

    #[test]
    fn rank_outside_world_is_rejected() {
        let b = GroupBuilder::new(3, 3, "127.0.0.1:1", b"t");
        assert!(b.config().validate().is_err());
        let b = GroupBuilder::new(2, 3, "127.0.0.1:1", b"t");
        assert!(b.config().validate().is_ok());
    }

    #[test]
    fn addresses_drop_duplicates_and_reject_unreachable_ones() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let b = GroupBuilder::new(0, 2, "127.0.0.1:1", b"t").addresses([
            ip("127.0.0.1"),
            ip("::1"),
            ip("127.0.0.1"),
        ]);
        assert_eq!(b.config().addresses, [ip("127.0.0.1"), ip("::1")]);
        assert!(b.config().validate().is_ok());
        for bad in ["0.0.0.0", "::", "224.0.0.1"] {
            let b = GroupBuilder::new(0, 2, "127.0.0.1:1", b"t").addresses([ip(bad)]);
            let err = b.config().validate().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
        let many = (1..=17u8).map(|i| IpAddr::from([127, 0, 0, i]));
        let b = GroupBuilder::new(0, 2, "127.0.0.1:1", b"t").addresses(many);
        assert!(b.config().validate().is_err());
    }
}

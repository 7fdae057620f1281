//! From measured links to the hostfile: each host's addresses, best first.
//!
//! An address every other host reached comes before one only some did:
//! the launcher takes rank 0's first address as the coordinator, which all
//! ranks must reach. Then higher bandwidth first (the slowest peer's), then
//! lower round trip (the slowest peer's).

use std::cmp::Ordering;
use std::net::Ipv4Addr;

use super::wire::Measurement;
use crate::hostfile::{Host, Hostfile};

/// One measured direction: host `from` dialled host `to` at `addr`.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasuredLink {
    pub from: usize,
    pub to: usize,
    pub addr: Ipv4Addr,
    pub measured: Measurement,
}

/// How well one address of one host is reached by the others.
#[derive(Debug, Clone, PartialEq)]
pub struct AddressStats {
    pub addr: Ipv4Addr,
    pub reached_by: usize,
    /// The slowest peer's bandwidth, Gbit/s.
    pub gbps: f64,
    /// The slowest peer's round trip, microseconds.
    pub rtt_us: f64,
}

/// Per host (by index), its reached addresses, best first.
pub fn address_stats(hosts: usize, links: &[MeasuredLink]) -> Vec<Vec<AddressStats>> {
    let mut per_host: Vec<Vec<AddressStats>> = vec![Vec::new(); hosts];
    for link in links {
        let Some(list) = per_host.get_mut(link.to) else {
            continue;
        };
        match list.iter_mut().find(|s| s.addr == link.addr) {
            Some(s) => {
                s.reached_by += 1;
                s.gbps = s.gbps.min(link.measured.gbps);
                s.rtt_us = s.rtt_us.max(link.measured.rtt_us);
            }
            None => list.push(AddressStats {
                addr: link.addr,
                reached_by: 1,
                gbps: link.measured.gbps,
                rtt_us: link.measured.rtt_us,
            }),
        }
    }
    for list in &mut per_host {
        list.sort_by(better_first);
    }
    per_host
}

fn better_first(x: &AddressStats, y: &AddressStats) -> Ordering {
    y.reached_by
        .cmp(&x.reached_by)
        .then(y.gbps.total_cmp(&x.gbps))
        .then(x.rtt_us.total_cmp(&y.rtt_us))
        .then(x.addr.cmp(&y.addr))
}

/// The hostfile: `names` as given to ssh, each with its ordered addresses.
pub fn build_hostfile(names: &[String], stats: &[Vec<AddressStats>]) -> Hostfile {
    let hosts = names
        .iter()
        .enumerate()
        .map(|(i, name)| Host {
            ssh: name.clone(),
            ips: stats
                .get(i)
                .map(|list| list.iter().map(|s| s.addr.to_string()).collect())
                .unwrap_or_default(),
            rdma: Vec::new(),
        })
        .collect();
    Hostfile {
        backend: None,
        envs: Vec::new(),
        hosts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(from: usize, to: usize, addr: &str, gbps: f64, rtt_us: f64) -> MeasuredLink {
        MeasuredLink {
            from,
            to,
            addr: addr.parse().unwrap(),
            measured: Measurement { rtt_us, gbps },
        }
    }

    #[test]
    fn faster_address_first_then_lower_round_trip() {
        let links = [
            link(1, 0, "10.0.0.1", 1.0, 50.0),
            link(1, 0, "10.0.1.1", 9.0, 80.0),
            link(1, 0, "10.0.2.1", 9.0, 20.0),
        ];
        let stats = address_stats(2, &links);
        let order: Vec<String> = stats[0].iter().map(|s| s.addr.to_string()).collect();
        assert_eq!(order, ["10.0.2.1", "10.0.1.1", "10.0.0.1"]);
        assert!(stats[1].is_empty());
    }

    #[test]
    fn address_all_peers_reach_comes_first_and_slowest_peer_counts() {
        let links = [
            link(1, 0, "10.0.0.1", 10.0, 10.0),
            link(2, 0, "10.0.0.1", 2.0, 30.0),
            link(1, 0, "10.78.0.1", 40.0, 5.0),
        ];
        let stats = address_stats(3, &links);
        assert_eq!(stats[0][0].addr.to_string(), "10.0.0.1");
        assert_eq!((stats[0][0].gbps, stats[0][0].rtt_us), (2.0, 30.0));
        assert_eq!(stats[0][0].reached_by, 2);
        let hf = build_hostfile(&["a".into(), "b".into(), "c".into()], &stats);
        assert_eq!(hf.hosts[0].ips, ["10.0.0.1", "10.78.0.1"]);
        assert_eq!(hf.hosts[2].ssh, "c");
    }
}

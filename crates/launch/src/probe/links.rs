//! Point-to-point links with no IPv4 address (a Thunderbolt or direct
//! Ethernet cable between two hosts): each gets a /30 of 10.78.0.0/16 that
//! no host uses yet, one end `.1`, the other `.2`.

use std::net::Ipv4Addr;

use super::error::ProbeError;
use super::facts::{HostFacts, Ipv4Net};

/// Host `a`'s interface `a_if` is cabled to host `b`'s `b_if` (indices
/// into the survey's hosts).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct P2pLink {
    pub a: usize,
    pub a_if: String,
    pub b: usize,
    pub b_if: String,
}

/// One address to add: `ip addr add NET dev INTERFACE` on host `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressAssignment {
    pub host: usize,
    pub interface: String,
    pub net: Ipv4Net,
}

impl AddressAssignment {
    pub fn command(&self) -> String {
        format!(
            "ip addr add {}/{} dev {}",
            self.net.addr, self.net.prefix, self.interface
        )
    }
}

/// Keeps the links whose two interfaces reach nothing else: an interface
/// that reaches several is on a shared segment (a switch), where /30 pairs
/// would be wrong.
pub fn cables_only(links: Vec<P2pLink>) -> Vec<P2pLink> {
    let ends = |l: &P2pLink| [(l.a, l.a_if.clone()), (l.b, l.b_if.clone())];
    let all: Vec<(usize, String)> = links.iter().flat_map(ends).collect();
    let count = |end: &(usize, String)| all.iter().filter(|e| *e == end).count();
    links
        .into_iter()
        .filter(|l| ends(l).iter().all(|e| count(e) == 1))
        .collect()
}

/// Both ends of every link, on subnets that overlap nothing in `facts`.
pub fn plan_addresses(
    links: &[P2pLink],
    facts: &[HostFacts],
) -> Result<Vec<AddressAssignment>, ProbeError> {
    let mut taken: Vec<Ipv4Net> = facts
        .iter()
        .flat_map(|f| f.interfaces.iter().flat_map(|i| i.ipv4.iter().copied()))
        .collect();
    let mut candidates = (0u32..1 << 14).map(|k| Ipv4Addr::from(0x0a4e_0000 + (k << 2)));
    let mut plan = Vec::new();
    for link in links {
        let network = candidates
            .find(|net| !overlaps(*net, &taken))
            .ok_or(ProbeError::NoFreeSubnet)?;
        let end = |offset: u32| Ipv4Net {
            addr: Ipv4Addr::from(u32::from(network) + offset),
            prefix: 30,
        };
        taken.push(end(1));
        plan.push(AddressAssignment {
            host: link.a,
            interface: link.a_if.clone(),
            net: end(1),
        });
        plan.push(AddressAssignment {
            host: link.b,
            interface: link.b_if.clone(),
            net: end(2),
        });
    }
    Ok(plan)
}

fn overlaps(network: Ipv4Addr, taken: &[Ipv4Net]) -> bool {
    let subnet = Ipv4Net {
        addr: network,
        prefix: 30,
    };
    taken
        .iter()
        .any(|t| subnet.contains(t.addr) || t.contains(network))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::facts::Interface;

    fn host(nets: &[(&str, u8)]) -> HostFacts {
        HostFacts {
            hostname: "h".into(),
            cores: 1,
            mem_bytes: 0,
            gpus: vec![],
            interfaces: vec![Interface {
                name: "eth0".into(),
                up: true,
                loopback: false,
                master: None,
                ipv4: nets
                    .iter()
                    .map(|(a, p)| Ipv4Net {
                        addr: a.parse().unwrap(),
                        prefix: *p,
                    })
                    .collect(),
                link_local6: vec![],
            }],
        }
    }

    fn link(a: usize, b: usize) -> P2pLink {
        P2pLink {
            a,
            a_if: format!("p{a}"),
            b,
            b_if: format!("p{b}"),
        }
    }

    #[test]
    fn each_link_gets_its_own_slash_30_pair() {
        let facts = [host(&[("10.77.0.1", 24)]), host(&[]), host(&[])];
        let plan = plan_addresses(&[link(0, 1), link(1, 2)], &facts).unwrap();
        let cmds: Vec<(usize, String)> = plan.iter().map(|a| (a.host, a.command())).collect();
        assert_eq!(
            cmds,
            [
                (0, "ip addr add 10.78.0.1/30 dev p0".to_owned()),
                (1, "ip addr add 10.78.0.2/30 dev p1".to_owned()),
                (1, "ip addr add 10.78.0.5/30 dev p1".to_owned()),
                (2, "ip addr add 10.78.0.6/30 dev p2".to_owned()),
            ]
        );
    }

    #[test]
    fn an_interface_reaching_several_hosts_is_not_a_cable() {
        let shared = P2pLink {
            a: 0,
            a_if: "sw".into(),
            b: 2,
            b_if: "sw".into(),
        };
        let also = P2pLink {
            a: 0,
            a_if: "sw".into(),
            b: 3,
            b_if: "sw".into(),
        };
        let kept = cables_only(vec![link(1, 2), shared, also]);
        assert_eq!(kept, [link(1, 2)]);
    }

    #[test]
    fn subnets_in_use_are_skipped() {
        let facts = [host(&[("10.78.0.2", 30)]), host(&[("10.78.0.0", 29)])];
        let plan = plan_addresses(&[link(0, 1)], &facts).unwrap();
        assert_eq!(plan[0].net.addr, "10.78.0.9".parse::<Ipv4Addr>().unwrap());
        let facts = [host(&[("10.0.0.1", 8)]), host(&[])];
        assert!(matches!(
            plan_addresses(&[link(0, 1)], &facts),
            Err(ProbeError::NoFreeSubnet)
        ));
    }
}

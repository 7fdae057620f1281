//! What a host reports about itself: one shell script, run over ssh,
//! whose sections this module parses.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::Value;

/// Prints `key value` lines, then `ip -j addr` and nvidia-smi's CSV in
/// their own sections. Only POSIX sh, /proc and iproute2 are assumed.
pub const FACTS_SCRIPT: &str = r#"echo "hostname $(hostname 2>/dev/null || cat /proc/sys/kernel/hostname)"
echo "cores $(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc)"
awk '/^MemTotal:/ {print "mem_kib", $2}' /proc/meminfo 2>/dev/null
echo "@@ip"
ip -j addr show 2>/dev/null || echo "[]"
echo
echo "@@gpu"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits 2>/dev/null
fi
"#;

#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    pub hostname: String,
    pub cores: usize,
    pub mem_bytes: u64,
    pub interfaces: Vec<Interface>,
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// Administratively up with a carrier.
    pub up: bool,
    pub loopback: bool,
    /// A bridge or bond it is enslaved to: its addresses live there.
    pub master: Option<String>,
    pub ipv4: Vec<Ipv4Net>,
    /// IPv6 link-local addresses (fe80::/10), usable only through this
    /// interface; how a link without IPv4 is found.
    pub link_local6: Vec<Ipv6Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn contains(&self, other: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(self.addr) & mask == u32::from(other) & mask
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub name: String,
    pub mem_bytes: u64,
}

impl HostFacts {
    /// Parses [`FACTS_SCRIPT`]'s output.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (head, rest) = text
            .split_once("@@ip\n")
            .ok_or("no interface section (@@ip)")?;
        let (ip_json, gpu_csv) = rest.split_once("@@gpu").unwrap_or((rest, ""));
        let mut hostname = None;
        let mut cores = None;
        let mut mem_kib = 0u64;
        for line in head.lines() {
            match line.split_once(' ') {
                Some(("hostname", v)) => hostname = Some(v.trim().to_owned()),
                Some(("cores", v)) => {
                    cores = Some(v.trim().parse().map_err(|_| format!("cores: {v:?}"))?)
                }
                Some(("mem_kib", v)) => {
                    mem_kib = v.trim().parse().map_err(|_| format!("mem_kib: {v:?}"))?
                }
                _ => {}
            }
        }
        Ok(HostFacts {
            hostname: hostname.ok_or("no hostname line")?,
            cores: cores.ok_or("no cores line")?,
            mem_bytes: mem_kib * 1024,
            interfaces: parse_ip_json(ip_json)?,
            gpus: parse_gpus(gpu_csv),
        })
    }

    /// Every IPv4 address not on loopback: what other hosts might reach.
    pub fn reachable_ipv4(&self) -> Vec<Ipv4Addr> {
        self.interfaces
            .iter()
            .filter(|i| !i.loopback)
            .flat_map(|i| i.ipv4.iter().map(|n| n.addr))
            .filter(|a| !a.is_loopback())
            .collect()
    }

    /// Interfaces that could be one end of an unaddressed point-to-point
    /// link: up, not loopback, not enslaved, no IPv4, a link-local IPv6.
    pub fn unaddressed(&self) -> impl Iterator<Item = &Interface> {
        self.interfaces.iter().filter(|i| {
            i.up && !i.loopback
                && i.master.is_none()
                && i.ipv4.is_empty()
                && !i.link_local6.is_empty()
        })
    }
}

fn parse_ip_json(text: &str) -> Result<Vec<Interface>, String> {
    let value: Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("`ip -j addr` output: {e}"))?;
    let Value::Array(items) = value else {
        return Err("`ip -j addr` output: expected an array".into());
    };
    items
        .iter()
        .map(parse_interface)
        .collect::<Result<Vec<_>, _>>()
}

fn parse_interface(item: &Value) -> Result<Interface, String> {
    let name = item["ifname"]
        .as_str()
        .ok_or("`ip -j addr` output: an interface without \"ifname\"")?
        .to_owned();
    let flags: Vec<&str> = item["flags"]
        .as_array()
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let up = flags.contains(&"UP") && flags.contains(&"LOWER_UP");
    let loopback = flags.contains(&"LOOPBACK") || item["link_type"] == "loopback";
    let master = item["master"].as_str().map(str::to_owned);
    let mut ipv4 = Vec::new();
    let mut link_local6 = Vec::new();
    for addr in item["addr_info"].as_array().into_iter().flatten() {
        let Some(local) = addr["local"].as_str() else {
            continue;
        };
        match addr["family"].as_str() {
            Some("inet") => {
                let prefix = addr["prefixlen"].as_u64().unwrap_or(32).min(32) as u8;
                if let Ok(a) = local.parse() {
                    ipv4.push(Ipv4Net { addr: a, prefix });
                }
            }
            Some("inet6") => {
                // A tentative address (duplicate detection still running)
                // cannot be connected to yet.
                let tentative = addr["tentative"].as_bool().unwrap_or(false);
                if let Ok(a) = local.parse::<Ipv6Addr>()
                    && a.is_unicast_link_local()
                    && !tentative
                {
                    link_local6.push(a);
                }
            }
            _ => {}
        }
    }
    Ok(Interface {
        name,
        up,
        loopback,
        master,
        ipv4,
        link_local6,
    })
}

fn parse_gpus(csv: &str) -> Vec<Gpu> {
    csv.lines()
        .filter_map(|line| {
            let (name, mib) = line.rsplit_once(',')?;
            let mib: u64 = mib.trim().parse().ok()?;
            Some(Gpu {
                name: name.trim().to_owned(),
                mem_bytes: mib * 1024 * 1024,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"hostname h1
cores 16
mem_kib 131072000
@@ip
[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"link_type":"loopback",
  "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
 {"ifindex":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"link_type":"ether",
  "addr_info":[{"family":"inet","local":"10.77.0.2","prefixlen":24},
               {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]},
 {"ifindex":3,"ifname":"p2p","flags":["BROADCAST","UP","LOWER_UP"],"link_type":"ether",
  "addr_info":[{"family":"inet6","local":"fe80::2","prefixlen":64,"scope":"link"}]},
 {"ifindex":4,"ifname":"fresh","flags":["UP","LOWER_UP"],"link_type":"ether",
  "addr_info":[{"family":"inet6","local":"fe80::3","prefixlen":64,"tentative":true}]},
 {"ifindex":5,"ifname":"down","flags":["BROADCAST"],"link_type":"ether",
  "addr_info":[{"family":"inet6","local":"fe80::4","prefixlen":64}]}]

@@gpu
NVIDIA H100 80GB HBM3, 81559
"#;

    #[test]
    fn parses_cores_memory_gpus_and_addresses() {
        let f = HostFacts::parse(SAMPLE).unwrap();
        assert_eq!(f.hostname, "h1");
        assert_eq!(f.cores, 16);
        assert_eq!(f.mem_bytes, 131_072_000 * 1024);
        assert_eq!(f.gpus[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(f.gpus[0].mem_bytes, 81559 << 20);
        assert_eq!(
            f.reachable_ipv4(),
            ["10.77.0.2".parse::<Ipv4Addr>().unwrap()]
        );
        assert!(f.interfaces[0].loopback);
        assert_eq!(f.interfaces[1].ipv4[0].prefix, 24);
    }

    #[test]
    fn unaddressed_interfaces_are_up_with_a_settled_link_local_only() {
        let f = HostFacts::parse(SAMPLE).unwrap();
        let names: Vec<&str> = f.unaddressed().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["p2p"]);
    }

    #[test]
    fn missing_sections_are_errors() {
        assert!(
            HostFacts::parse("hostname a\n")
                .unwrap_err()
                .contains("@@ip")
        );
        assert!(
            HostFacts::parse("cores 2\n@@ip\n[]\n@@gpu\n")
                .unwrap_err()
                .contains("hostname")
        );
        assert!(
            HostFacts::parse("hostname a\ncores 2\n@@ip\n{oops\n@@gpu\n")
                .unwrap_err()
                .contains("ip -j addr")
        );
    }

    #[test]
    fn the_script_parses_on_this_machine() {
        let out = std::process::Command::new("sh")
            .args(["-c", FACTS_SCRIPT])
            .output()
            .unwrap();
        let f = HostFacts::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert!(f.cores >= 1);
    }

    #[test]
    fn net_contains_its_subnet_only() {
        let n = Ipv4Net {
            addr: "10.78.0.1".parse().unwrap(),
            prefix: 30,
        };
        assert!(n.contains("10.78.0.3".parse().unwrap()));
        assert!(!n.contains("10.78.0.4".parse().unwrap()));
    }
}

//! Reading the launcher's environment contract (see the README):
//! HUDDLE_RANK, HUDDLE_WORLD_SIZE, HUDDLE_LOCAL_RANK, HUDDLE_LOCAL_SIZE,
//! HUDDLE_COORDINATOR, HUDDLE_JOB_TOKEN, plus optional tuning
//! (HUDDLE_ALGO, HUDDLE_PEER_TIMEOUT, HUDDLE_JOIN_TIMEOUT,
//! HUDDLE_CONNS_PER_PEER, HUDDLE_PIECE_BYTES, HUDDLE_ADDRS, HUDDLE_SHM,
//! HUDDLE_SHM_HOST_KEY).

use std::net::IpAddr;
use std::time::Duration;

use crate::config::{Algo, Config, GroupBuilder, parse_token_hex};
use crate::error::{CommError, Result};

const REQUIRED: [&str; 4] = [
    "HUDDLE_RANK",
    "HUDDLE_WORLD_SIZE",
    "HUDDLE_COORDINATOR",
    "HUDDLE_JOB_TOKEN",
];
const LOCAL: [&str; 2] = ["HUDDLE_LOCAL_RANK", "HUDDLE_LOCAL_SIZE"];

/// The configuration the launcher set, `None` when it set nothing.
pub fn config_from_env() -> Result<Option<Config>> {
    config_from(|k| std::env::var(k).ok())
}

/// As [`config_from_env`], over any variable lookup (testable without
/// touching the process environment).
pub fn config_from(get: impl Fn(&str) -> Option<String>) -> Result<Option<Config>> {
    let set: Vec<&str> = REQUIRED
        .iter()
        .chain(LOCAL.iter())
        .copied()
        .filter(|k| get(k).is_some())
        .collect();
    if set.is_empty() {
        return Ok(None);
    }
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|k| get(k).is_none())
        .collect();
    let local_set = LOCAL.iter().filter(|k| get(k).is_some()).count();
    let mut missing_all = missing.clone();
    if local_set == 1 {
        missing_all.extend(LOCAL.iter().copied().filter(|k| get(k).is_none()));
    }
    if !missing_all.is_empty() {
        return Err(CommError::PartialEnv {
            set: set.join(", "),
            missing: missing_all.join(", "),
        });
    }
    let num = |var: &'static str| -> Result<usize> {
        let v = get(var).unwrap_or_default();
        v.trim().parse::<usize>().map_err(|_| CommError::Env {
            var,
            reason: format!("`{v}` is not a non-negative integer"),
        })
    };
    let secs = |var: &'static str, default: u64| -> Result<Duration> {
        match get(var) {
            None => Ok(Duration::from_secs(default)),
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or(CommError::Env {
                    var,
                    reason: format!("`{v}` is not a positive number of seconds"),
                }),
        }
    };
    let rank = num("HUDDLE_RANK")?;
    let world_size = num("HUDDLE_WORLD_SIZE")?;
    let coordinator = get("HUDDLE_COORDINATOR").unwrap_or_default();
    let token_hex = get("HUDDLE_JOB_TOKEN").unwrap_or_default();
    let token = parse_token_hex(&token_hex).ok_or(CommError::Env {
        var: "HUDDLE_JOB_TOKEN",
        reason: "not a non-empty hex string".into(),
    })?;
    let mut b = GroupBuilder::new(rank, world_size, coordinator, &token)
        .peer_timeout(secs("HUDDLE_PEER_TIMEOUT", 30)?)
        .join_timeout(secs("HUDDLE_JOIN_TIMEOUT", 60)?);
    if local_set == 2 {
        b = b.local(num("HUDDLE_LOCAL_RANK")?, num("HUDDLE_LOCAL_SIZE")?);
    }
    if let Some(a) = get("HUDDLE_ALGO") {
        let algo = Algo::parse(&a).ok_or(CommError::Env {
            var: "HUDDLE_ALGO",
            reason: format!("`{a}` is not one of ring, mesh, auto"),
        })?;
        b = b.algo(algo);
    }
    if get("HUDDLE_CONNS_PER_PEER").is_some() {
        b = b.conns_per_peer(num("HUDDLE_CONNS_PER_PEER")?);
    }
    if get("HUDDLE_PIECE_BYTES").is_some() {
        b = b.piece_bytes(num("HUDDLE_PIECE_BYTES")?);
    }
    if let Some(list) = get("HUDDLE_ADDRS") {
        b = b.addresses(parse_addresses(&list)?);
    }
    if let Some(v) = get("HUDDLE_SHM") {
        let on = match v.trim().to_ascii_lowercase().as_str() {
            "1" | "on" | "true" | "yes" | "" => true,
            "0" | "off" | "false" | "no" => false,
            _ => {
                return Err(CommError::Env {
                    var: "HUDDLE_SHM",
                    reason: format!("`{v}` is not 0 or 1"),
                });
            }
        };
        b = b.shm(on);
    }
    if let Some(k) = get("HUDDLE_SHM_HOST_KEY").filter(|k| !k.is_empty()) {
        b = b.shm_host_key(k);
    }
    let config = b.config().clone();
    config.validate().map_err(|e| match e {
        CommError::Config(reason) => CommError::Env {
            var: "HUDDLE_RANK/HUDDLE_WORLD_SIZE/HUDDLE_CONNS_PER_PEER/HUDDLE_ADDRS",
            reason,
        },
        other => other,
    })?;
    Ok(Some(config))
}

/// `HUDDLE_ADDRS`: comma-separated IPs (IPv6 bare or in brackets); empty
/// entries, as from a trailing comma, are skipped.
fn parse_addresses(list: &str) -> Result<Vec<IpAddr>> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let bare = entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .unwrap_or(entry);
            bare.parse::<IpAddr>().map_err(|_| CommError::Env {
                var: "HUDDLE_ADDRS",
                reason: format!(
                    "`{entry}` is not an IP address (expected a comma-separated list like `10.0.0.1,fd00::1`)"
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const FULL: [(&str, &str); 4] = [
        ("HUDDLE_RANK", "1"),
        ("HUDDLE_WORLD_SIZE", "3"),
        ("HUDDLE_COORDINATOR", "[::1]:4000"),
        ("HUDDLE_JOB_TOKEN", "abcd"),
    ];

    #[test]
    fn nothing_set_means_single_rank() {
        assert!(config_from(lookup(&[])).unwrap().is_none());
    }

    #[test]
    fn partial_set_is_an_error_naming_what_is_missing() {
        let err = config_from(lookup(&FULL[..2])).unwrap_err().to_string();
        assert!(err.contains("HUDDLE_COORDINATOR"), "{err}");
        assert!(err.contains("HUDDLE_JOB_TOKEN"), "{err}");
    }

    #[test]
    fn full_set_parses_with_tuning() {
        let mut pairs = FULL.to_vec();
        pairs.push(("HUDDLE_ALGO", "mesh"));
        pairs.push(("HUDDLE_PEER_TIMEOUT", "2.5"));
        pairs.push(("HUDDLE_CONNS_PER_PEER", "3"));
        let c = config_from(lookup(&pairs)).unwrap().unwrap();
        assert_eq!((c.rank, c.world_size, c.conns_per_peer), (1, 3, 3));
        assert_eq!(c.algo, Algo::Mesh);
        assert_eq!(c.peer_timeout, Duration::from_millis(2500));
        assert_eq!(c.token, vec![0xab, 0xcd]);
    }

    #[test]
    fn shm_switch_and_host_key_parse() {
        let mut pairs = FULL.to_vec();
        let cfg = config_from(lookup(&pairs)).unwrap().unwrap();
        assert!(cfg.shm && cfg.shm_host_key.is_none());
        pairs.push(("HUDDLE_SHM", "0"));
        pairs.push(("HUDDLE_SHM_HOST_KEY", "box-a"));
        let cfg = config_from(lookup(&pairs)).unwrap().unwrap();
        assert!(!cfg.shm);
        assert_eq!(cfg.shm_host_key.as_deref(), Some("box-a"));
        let at = pairs.len() - 2;
        pairs[at] = ("HUDDLE_SHM", "maybe");
        let err = config_from(lookup(&pairs)).unwrap_err().to_string();
        assert!(err.contains("HUDDLE_SHM"), "{err}");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let mut pairs = FULL.to_vec();
        pairs.push(("HUDDLE_ALGO", "tree"));
        let err = config_from(lookup(&pairs)).unwrap_err().to_string();
        assert!(err.contains("HUDDLE_ALGO"), "{err}");
        let mut pairs = FULL.to_vec();
        pairs[0] = ("HUDDLE_RANK", "7");
        assert!(config_from(lookup(&pairs)).is_err());
        let mut pairs = FULL.to_vec();
        pairs[3] = ("HUDDLE_JOB_TOKEN", "xyz");
        let err = config_from(lookup(&pairs)).unwrap_err().to_string();
        assert!(err.contains("HUDDLE_JOB_TOKEN"), "{err}");
    }

    #[test]
    fn addresses_parse_as_a_comma_separated_list() {
        let mut pairs = FULL.to_vec();
        pairs.push(("HUDDLE_ADDRS", " 10.0.0.1, fd00::1,[::1],"));
        let c = config_from(lookup(&pairs)).unwrap().unwrap();
        let want: Vec<IpAddr> = ["10.0.0.1", "fd00::1", "::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(c.addresses, want);
        let c = config_from(lookup(&FULL)).unwrap().unwrap();
        assert!(c.addresses.is_empty());
    }

    #[test]
    fn bad_address_names_the_variable_and_the_entry() {
        for (list, bad) in [
            ("10.0.0.1,m2", "m2"),
            ("10.0.0.300", "10.0.0.300"),
            ("::", "::"),
        ] {
            let mut pairs = FULL.to_vec();
            pairs.push(("HUDDLE_ADDRS", list));
            let err = config_from(lookup(&pairs)).unwrap_err().to_string();
            assert!(err.contains("HUDDLE_ADDRS") && err.contains(bad), "{err}");
        }
    }
}

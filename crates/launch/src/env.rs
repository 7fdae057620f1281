//! The environment contract: what every rank finds in its environment.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rand::RngCore;

use crate::LaunchError;

pub const RANK: &str = "HUDDLE_RANK";
pub const WORLD_SIZE: &str = "HUDDLE_WORLD_SIZE";
pub const LOCAL_RANK: &str = "HUDDLE_LOCAL_RANK";
pub const LOCAL_SIZE: &str = "HUDDLE_LOCAL_SIZE";
pub const COORDINATOR: &str = "HUDDLE_COORDINATOR";
pub const JOB_TOKEN: &str = "HUDDLE_JOB_TOKEN";
pub const HOSTFILE: &str = "HUDDLE_HOSTFILE";
/// The addresses a rank advertises to its peers: its host's `ips` from the
/// hostfile, comma-separated. Set by the ssh launcher only; a user's own
/// value passes through where the host lists no ips.
pub const ADDRS: &str = "HUDDLE_ADDRS";

/// Every variable the launcher owns; users cannot override them with `--env`.
pub const CONTRACT: [&str; 7] = [
    RANK,
    WORLD_SIZE,
    LOCAL_RANK,
    LOCAL_SIZE,
    COORDINATOR,
    JOB_TOKEN,
    HOSTFILE,
];

/// A secret shared by the ranks of one job, proving membership to peers.
///
/// `Debug` and `Display` hide it so it cannot leak into logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct JobToken(String);

impl JobToken {
    /// 256 fresh random bits from the OS-seeded CSPRNG, as hex.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        JobToken(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JobToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobToken(<hidden>)")
    }
}

/// One `KEY=VALUE` assignment from `--env` or a hostfile's `envs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvPair {
    pub key: String,
    pub value: OsString,
}

impl EnvPair {
    /// Parses `KEY=VALUE`; the value may hold anything, `=` included.
    pub fn parse(given: &OsStr) -> Result<Self, LaunchError> {
        let bytes = given.as_bytes();
        let invalid = |reason| LaunchError::InvalidEnv {
            given: given.to_string_lossy().into_owned(),
            reason,
        };
        let eq = bytes
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| invalid("expected KEY=VALUE"))?;
        let key =
            std::str::from_utf8(&bytes[..eq]).map_err(|_| invalid("the name is not UTF-8"))?;
        validate_key(key).map_err(invalid)?;
        Ok(EnvPair {
            key: key.to_owned(),
            value: OsStr::from_bytes(&bytes[eq + 1..]).to_owned(),
        })
    }
}

fn validate_key(key: &str) -> Result<(), &'static str> {
    let mut chars = key.chars();
    match chars.next() {
        None => return Err("the name is empty"),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return Err("a name starts with a letter or `_`");
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("a name holds only letters, digits and `_`");
    }
    if CONTRACT.contains(&key) {
        return Err("the launcher sets this variable itself");
    }
    Ok(())
}

/// Where one rank sits in the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub rank: usize,
    pub local_rank: usize,
    pub local_size: usize,
}

/// What the whole job shares; [`JobEnv::for_rank`] adds each rank's place.
#[derive(Debug, Clone)]
pub struct JobEnv {
    pub world_size: usize,
    /// `host:port` where rank 0 listens.
    pub coordinator: String,
    pub token: JobToken,
    pub hostfile: Option<PathBuf>,
    /// User assignments, applied before the contract so they cannot shadow it.
    pub extra: Vec<EnvPair>,
}

impl JobEnv {
    pub fn for_rank(&self, place: Placement) -> Vec<(String, OsString)> {
        let mut vars: Vec<(String, OsString)> = self
            .extra
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        let mut set = |k: &str, v: String| vars.push((k.to_owned(), v.into()));
        set(RANK, place.rank.to_string());
        set(WORLD_SIZE, self.world_size.to_string());
        set(LOCAL_RANK, place.local_rank.to_string());
        set(LOCAL_SIZE, place.local_size.to_string());
        set(COORDINATOR, self.coordinator.clone());
        set(JOB_TOKEN, self.token.reveal().to_owned());
        if let Some(path) = &self.hostfile {
            vars.push((HOSTFILE.to_owned(), path.clone().into_os_string()));
        }
        vars
    }

    /// As [`JobEnv::for_rank`], for a rank on a host reached at `ips`: the
    /// rank advertises all of them, so peers open connections to each.
    pub fn for_rank_on(&self, place: Placement, ips: &[String]) -> Vec<(String, OsString)> {
        let mut vars = self.for_rank(place);
        if let Some(list) = advertised(ips) {
            vars.push((ADDRS.to_owned(), list.into()));
        }
        vars
    }
}

/// `ips` as a `HUDDLE_ADDRS` value. Zoned link-local entries (`fe80::1%en0`)
/// are left out: the zone names an interface of the host that wrote the
/// hostfile, which means nothing to the peers that would dial it.
fn advertised(ips: &[String]) -> Option<String> {
    let kept: Vec<&str> = ips
        .iter()
        .map(String::as_str)
        .filter(|ip| !ip.contains('%'))
        .collect();
    (!kept.is_empty()).then(|| kept.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<EnvPair, LaunchError> {
        EnvPair::parse(OsStr::new(s))
    }

    #[test]
    fn value_keeps_equals_signs_and_may_be_empty() {
        let p = parse("A_1=x=y").unwrap();
        assert_eq!((p.key.as_str(), p.value.to_str()), ("A_1", Some("x=y")));
        assert_eq!(parse("_E=").unwrap().value, OsString::new());
    }

    #[test]
    fn bad_names_are_rejected_with_a_reason() {
        for bad in ["NOEQUALS", "=v", "1A=v", "A-B=v", "A B=v", "HUDDLE_RANK=3"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn tokens_are_long_fresh_and_hidden_from_debug() {
        let (a, b) = (JobToken::generate(), JobToken::generate());
        assert_eq!(a.reveal().len(), 64);
        assert!(a.reveal().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(!format!("{a:?}").contains(a.reveal()));
    }

    #[test]
    fn contract_comes_after_user_pairs() {
        let env = JobEnv {
            world_size: 4,
            coordinator: "10.0.0.1:5000".into(),
            token: JobToken::generate(),
            hostfile: None,
            extra: vec![parse("FOO=bar").unwrap()],
        };
        let vars = env.for_rank(Placement {
            rank: 3,
            local_rank: 1,
            local_size: 2,
        });
        assert_eq!(vars[0], ("FOO".into(), "bar".into()));
        let get = |k: &str| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get(RANK), Some("3".into()));
        assert_eq!(get(LOCAL_RANK), Some("1".into()));
        assert_eq!(get(LOCAL_SIZE), Some("2".into()));
        assert_eq!(get(WORLD_SIZE), Some("4".into()));
        assert_eq!(get(HOSTFILE), None);
    }

    #[test]
    fn rank_on_a_host_advertises_all_its_ips() {
        let env = JobEnv {
            world_size: 2,
            coordinator: "10.0.0.1:5000".into(),
            token: JobToken::generate(),
            hostfile: None,
            extra: vec![],
        };
        let place = Placement {
            rank: 1,
            local_rank: 0,
            local_size: 1,
        };
        let ips: Vec<String> = ["10.0.0.2", "fe80::1%en0", "fd00::2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let vars = env.for_rank_on(place, &ips);
        let addrs: Vec<&OsString> = vars
            .iter()
            .filter(|(k, _)| k == ADDRS)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(addrs, [&OsString::from("10.0.0.2,fd00::2")]);
        assert!(!env.for_rank_on(place, &[]).iter().any(|(k, _)| k == ADDRS));
        assert!(!env.for_rank(place).iter().any(|(k, _)| k == ADDRS));
    }
}

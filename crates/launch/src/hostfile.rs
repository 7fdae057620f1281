//! Hostfiles in MLX's JSON formats, so a user brings the file they have:
//!
//! ```json
//! [{"ssh": "m1", "ips": ["10.0.0.1"]}, {"ssh": "m2", "ips": ["10.0.0.2"]}]
//! ```
//!
//! or the object form `{"backend": "ring", "envs": ["K=V"], "hosts": [...]}`.
//! Every mistake is reported in one line naming the host's index and field.

use std::ffi::OsStr;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::env::EnvPair;

#[derive(Debug, thiserror::Error)]
pub enum HostfileError {
    #[error("hostfile {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("hostfile {name}: {problem}")]
    Invalid { name: String, problem: String },
}

/// One machine of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// What `ssh` is given: a name from ssh_config, `user@host` or an address.
    pub ssh: String,
    /// Addresses other ranks reach this host at, best first.
    pub ips: Vec<String>,
    /// MLX's RDMA devices, one entry per peer; kept so files round-trip.
    pub rdma: Vec<RdmaEntry>,
}

/// One entry of a host's `rdma` list: no device, one, or several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdmaEntry {
    None,
    Device(String),
    Devices(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hostfile {
    /// MLX's backend name (`ring`, `jaccl`, ...); huddle only carries it.
    pub backend: Option<String>,
    /// Environment for every rank.
    pub envs: Vec<EnvPair>,
    pub hosts: Vec<Host>,
}

impl Hostfile {
    pub fn load(path: &Path) -> Result<Self, HostfileError> {
        let text = std::fs::read_to_string(path).map_err(|cause| HostfileError::Io {
            path: path.to_owned(),
            cause,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses hostfile JSON; `name` (usually the path) goes into errors.
    pub fn parse(text: &str, name: &str) -> Result<Self, HostfileError> {
        let invalid = |problem: String| HostfileError::Invalid {
            name: name.to_owned(),
            problem,
        };
        let value: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        parse_value(value).map_err(invalid)
    }

    /// `--hosts a,b,c`: ssh names; a name that is an IP address is also
    /// taken as the host's address.
    pub fn from_host_list(list: &str) -> Result<Self, HostfileError> {
        let invalid = |problem: String| HostfileError::Invalid {
            name: "--hosts".to_owned(),
            problem,
        };
        let mut hosts: Vec<Host> = Vec::new();
        for (i, name) in list.split(',').map(str::trim).enumerate() {
            if name.is_empty() {
                return Err(invalid(format!("host {i}: empty name")));
            }
            let ips = if is_ip(name) {
                vec![name.to_owned()]
            } else {
                Vec::new()
            };
            hosts.push(Host {
                ssh: name.to_owned(),
                ips,
                rdma: Vec::new(),
            });
        }
        check_duplicates(&hosts).map_err(invalid)?;
        Ok(Hostfile {
            backend: None,
            envs: Vec::new(),
            hosts,
        })
    }

    /// The object form, which MLX reads too.
    pub fn to_json(&self) -> String {
        let hosts: Vec<Value> = self
            .hosts
            .iter()
            .map(|h| {
                let rdma: Vec<Value> = h
                    .rdma
                    .iter()
                    .map(|r| match r {
                        RdmaEntry::None => Value::Null,
                        RdmaEntry::Device(d) => json!(d),
                        RdmaEntry::Devices(ds) => json!(ds),
                    })
                    .collect();
                json!({"ssh": h.ssh, "ips": h.ips, "rdma": rdma})
            })
            .collect();
        let envs: Vec<String> = self
            .envs
            .iter()
            .map(|p| format!("{}={}", p.key, p.value.to_string_lossy()))
            .collect();
        let mut root = Map::new();
        if let Some(backend) = &self.backend {
            root.insert("backend".into(), json!(backend));
        }
        root.insert("envs".into(), json!(envs));
        root.insert("hosts".into(), Value::Array(hosts));
        let mut text = serde_json::to_string_pretty(&Value::Object(root))
            .unwrap_or_else(|_| String::from("{}"));
        text.push('\n');
        text
    }

    /// Writes the file whole or not at all (through a temporary and rename).
    pub fn save(&self, path: &Path) -> Result<(), HostfileError> {
        let io_err = |cause| HostfileError::Io {
            path: path.to_owned(),
            cause,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, self.to_json()).map_err(io_err)?;
        std::fs::rename(&tmp, path).map_err(|cause| {
            let _ = std::fs::remove_file(&tmp);
            io_err(cause)
        })
    }
}

fn parse_value(value: Value) -> Result<Hostfile, String> {
    match value {
        Value::Array(hosts) => Ok(Hostfile {
            backend: None,
            envs: Vec::new(),
            hosts: parse_hosts(hosts)?,
        }),
        Value::Object(mut root) => {
            for key in root.keys() {
                if !["backend", "envs", "hosts"].contains(&key.as_str()) {
                    return Err(format!(
                        "unknown field {key:?} (expected \"backend\", \"envs\", \"hosts\")"
                    ));
                }
            }
            let backend = match root.remove("backend") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s),
                Some(_) => return Err("field \"backend\": expected a string".into()),
            };
            let envs = match root.remove("envs") {
                None | Some(Value::Null) => Vec::new(),
                Some(v) => parse_envs(v)?,
            };
            let hosts = match root.remove("hosts") {
                Some(Value::Array(hosts)) => parse_hosts(hosts)?,
                Some(_) => return Err("field \"hosts\": expected an array of hosts".into()),
                None => return Err("missing field \"hosts\"".into()),
            };
            Ok(Hostfile {
                backend,
                envs,
                hosts,
            })
        }
        _ => Err("expected an array of hosts or an object with \"hosts\"".into()),
    }
}

fn parse_envs(value: Value) -> Result<Vec<EnvPair>, String> {
    let Value::Array(items) = value else {
        return Err("field \"envs\": expected an array of \"KEY=VALUE\" strings".into());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let s = item.as_str().ok_or_else(|| {
                format!("field \"envs\": entry {i}: expected a \"KEY=VALUE\" string")
            })?;
            EnvPair::parse(OsStr::new(s)).map_err(|e| format!("field \"envs\": entry {i}: {e}"))
        })
        .collect()
}

fn parse_hosts(items: Vec<Value>) -> Result<Vec<Host>, String> {
    if items.is_empty() {
        return Err("no hosts".into());
    }
    let hosts = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_host(item).map_err(|e| format!("host {i}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    check_duplicates(&hosts)?;
    Ok(hosts)
}

fn parse_host(item: Value) -> Result<Host, String> {
    let Value::Object(mut fields) = item else {
        return Err("expected an object like {\"ssh\": \"name\", \"ips\": [...]}".into());
    };
    for key in fields.keys() {
        if !["ssh", "ips", "rdma"].contains(&key.as_str()) {
            return Err(format!(
                "unknown field {key:?} (expected \"ssh\", \"ips\", \"rdma\")"
            ));
        }
    }
    let ssh = match fields.remove("ssh") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(Value::String(_)) => return Err("field \"ssh\": empty host name".into()),
        Some(_) => return Err("field \"ssh\": expected a string".into()),
        None => return Err("missing field \"ssh\"".into()),
    };
    let ips = match fields.remove("ips") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => string_array(v).ok_or("field \"ips\": expected an array of strings")?,
    };
    if let Some(bad) = ips.iter().find(|ip| !is_ip(ip)) {
        return Err(format!("field \"ips\": {bad:?} is not an IP address"));
    }
    let rdma = match fields.remove("rdma") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(entries)) => entries
            .into_iter()
            .map(rdma_entry)
            .collect::<Option<Vec<_>>>()
            .ok_or("field \"rdma\": expected an array of null, strings or arrays of strings")?,
        Some(_) => return Err("field \"rdma\": expected an array".into()),
    };
    Ok(Host { ssh, ips, rdma })
}

fn rdma_entry(value: Value) -> Option<RdmaEntry> {
    match value {
        Value::Null => Some(RdmaEntry::None),
        Value::String(s) => Some(RdmaEntry::Device(s)),
        v => string_array(v).map(RdmaEntry::Devices),
    }
}

fn string_array(value: Value) -> Option<Vec<String>> {
    let Value::Array(items) = value else {
        return None;
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn check_duplicates(hosts: &[Host]) -> Result<(), String> {
    for (i, host) in hosts.iter().enumerate() {
        if let Some(first) = hosts[..i].iter().position(|h| h.ssh == host.ssh) {
            return Err(format!(
                "host {i}: field \"ssh\": {:?} is already host {first} (use --ranks-per-host for several ranks per host)",
                host.ssh
            ));
        }
    }
    Ok(())
}

/// An address, IPv6 zone (`fe80::1%en0`) allowed.
pub(crate) fn is_ip(s: &str) -> bool {
    let addr = s.split_once('%').map_or(s, |(a, _)| a);
    addr.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Hostfile::parse(text, "hosts.json").unwrap_err().to_string()
    }

    #[test]
    fn bare_array_parses() {
        let h = Hostfile::parse(
            r#"[{"ssh": "m1", "ips": ["10.0.0.1", "fe80::1%en0"]}, {"ssh": "m2"}]"#,
            "x",
        )
        .unwrap();
        assert_eq!(h.hosts.len(), 2);
        assert_eq!(h.hosts[0].ips, ["10.0.0.1", "fe80::1%en0"]);
        assert!(h.hosts[1].ips.is_empty());
        assert_eq!(h.backend, None);
    }

    #[test]
    fn object_form_parses_backend_envs_and_rdma() {
        let h = Hostfile::parse(
            r#"{"backend": "jaccl", "envs": ["A=1", "B=x=y"],
                "hosts": [{"ssh": "m1", "ips": [], "rdma": [null, "rdma_en3", ["a", "b"]]}]}"#,
            "x",
        )
        .unwrap();
        assert_eq!(h.backend.as_deref(), Some("jaccl"));
        assert_eq!(h.envs[1].key, "B");
        assert_eq!(h.envs[1].value, "x=y");
        assert_eq!(
            h.hosts[0].rdma,
            [
                RdmaEntry::None,
                RdmaEntry::Device("rdma_en3".into()),
                RdmaEntry::Devices(vec!["a".into(), "b".into()])
            ]
        );
    }

    #[test]
    fn written_file_reads_back_the_same() {
        let h = Hostfile::parse(
            r#"{"backend": "ring", "envs": ["A=1"], "hosts": [
                {"ssh": "m1", "ips": ["10.0.0.1"], "rdma": [null, "d"]},
                {"ssh": "m2", "ips": ["10.0.0.2"]}]}"#,
            "x",
        )
        .unwrap();
        assert_eq!(Hostfile::parse(&h.to_json(), "y").unwrap(), h);
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = std::env::temp_dir().join(format!("huddle-hostfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts.json");
        let h = Hostfile::from_host_list("a,10.0.0.2").unwrap();
        h.save(&path).unwrap();
        assert_eq!(Hostfile::load(&path).unwrap(), h);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = Hostfile::load(Path::new("/nonexistent/hosts.json")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("hostfile /nonexistent/hosts.json: "),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_host_and_field() {
        assert_eq!(
            err(r#"[{"ssh": "a"}, {"ssh": "b"}, {"ssh": "c", "ips": "10.0.0.3"}]"#),
            r#"hostfile hosts.json: host 2: field "ips": expected an array of strings"#
        );
        assert_eq!(
            err(r#"[{"ssh": "a", "ips": [1]}]"#),
            r#"hostfile hosts.json: host 0: field "ips": expected an array of strings"#
        );
        assert_eq!(
            err(r#"[{"ssh": 5}]"#),
            r#"hostfile hosts.json: host 0: field "ssh": expected a string"#
        );
        assert_eq!(
            err(r#"[{"ssh": "a", "rdma": "x"}]"#),
            r#"hostfile hosts.json: host 0: field "rdma": expected an array"#
        );
        assert!(err(r#"[{"ssh": "a", "rdma": [5]}]"#).contains("host 0: field \"rdma\""));
        assert_eq!(
            err(r#"["a"]"#),
            r#"hostfile hosts.json: host 0: expected an object like {"ssh": "name", "ips": [...]}"#
        );
    }

    #[test]
    fn missing_and_unknown_fields_are_errors() {
        assert_eq!(
            err(r#"[{"ssh": "a"}, {"ips": []}]"#),
            r#"hostfile hosts.json: host 1: missing field "ssh""#
        );
        assert!(
            err(r#"[{"ssh": "a", "port": 22}]"#)
                .starts_with(r#"hostfile hosts.json: host 0: unknown field "port""#)
        );
        assert!(
            err(r#"{"hosts": [{"ssh": "a"}], "extra": 1}"#)
                .starts_with(r#"hostfile hosts.json: unknown field "extra""#)
        );
        assert_eq!(
            err(r#"{"backend": "ring"}"#),
            r#"hostfile hosts.json: missing field "hosts""#
        );
        assert_eq!(
            err(r#"[{"ssh": ""}]"#),
            r#"hostfile hosts.json: host 0: field "ssh": empty host name"#
        );
    }

    #[test]
    fn bad_top_level_and_envs_are_errors() {
        assert!(err("{not json").starts_with("hostfile hosts.json: not valid JSON"));
        assert!(err("5").contains("expected an array of hosts"));
        assert_eq!(err("[]"), "hostfile hosts.json: no hosts");
        assert_eq!(
            err(r#"{"hosts": 5}"#),
            r#"hostfile hosts.json: field "hosts": expected an array of hosts"#
        );
        assert_eq!(
            err(r#"{"backend": 1, "hosts": [{"ssh": "a"}]}"#),
            r#"hostfile hosts.json: field "backend": expected a string"#
        );
        assert!(err(r#"{"envs": "A=1", "hosts": [{"ssh": "a"}]}"#).contains("field \"envs\""));
        assert!(
            err(r#"{"envs": ["A=1", 2], "hosts": [{"ssh": "a"}]}"#)
                .contains("field \"envs\": entry 1")
        );
        assert!(
            err(r#"{"envs": ["NOPE"], "hosts": [{"ssh": "a"}]}"#)
                .contains("field \"envs\": entry 0: invalid environment assignment")
        );
    }

    #[test]
    fn addresses_must_be_ip_addresses() {
        assert_eq!(
            err(r#"[{"ssh": "a", "ips": ["10.0.0.1", "m2.local"]}]"#),
            r#"hostfile hosts.json: host 0: field "ips": "m2.local" is not an IP address"#
        );
    }

    #[test]
    fn duplicate_hosts_are_errors() {
        assert!(
            err(r#"[{"ssh": "a"}, {"ssh": "b"}, {"ssh": "a"}]"#)
                .starts_with(r#"hostfile hosts.json: host 2: field "ssh": "a" is already host 0"#)
        );
        let e = Hostfile::from_host_list("a,b,a").unwrap_err().to_string();
        assert!(e.starts_with("hostfile --hosts: host 2"), "{e}");
    }

    #[test]
    fn host_list_takes_addresses_as_ips() {
        let h = Hostfile::from_host_list("m1, 10.0.0.2,::1").unwrap();
        let ips: Vec<&[String]> = h.hosts.iter().map(|h| h.ips.as_slice()).collect();
        assert_eq!(ips[0], [] as [String; 0]);
        assert_eq!(ips[1], ["10.0.0.2"]);
        assert_eq!(ips[2], ["::1"]);
        assert!(Hostfile::from_host_list("a,,b").is_err());
    }
}

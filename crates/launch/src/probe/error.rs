use std::io;

/// A host that ssh could not get to, with ssh's own words for why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreached {
    pub host: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{}", unreachable_message(.0, *.1))]
    Unreachable(Vec<Unreached>, usize),
    #[error("host {host}: unexpected facts: {problem}")]
    Facts { host: String, problem: String },
    #[error("host {host}: probe server: {problem}")]
    Server { host: String, problem: String },
    #[error("host {host}: probe client: {problem}")]
    Client { host: String, problem: String },
    #[error("host {host}: `{command}` failed: {problem}")]
    Setup {
        host: String,
        command: String,
        problem: String,
    },
    #[error("no address left for a new point-to-point link (10.78.0.0/16 is full)")]
    NoFreeSubnet,
    #[error("cannot run ssh: {0}")]
    Ssh(io::Error),
}

fn unreachable_message(failed: &[Unreached], total: usize) -> String {
    let list: Vec<String> = failed
        .iter()
        .map(|u| format!("{} ({})", u.host, u.reason))
        .collect();
    format!(
        "cannot reach {} of {total} hosts over ssh: {}",
        failed.len(),
        list.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_error_names_every_host() {
        let e = ProbeError::Unreachable(
            vec![
                Unreached {
                    host: "b".into(),
                    reason: "Connection refused".into(),
                },
                Unreached {
                    host: "c".into(),
                    reason: "Could not resolve hostname c".into(),
                },
            ],
            3,
        );
        assert_eq!(
            e.to_string(),
            "cannot reach 2 of 3 hosts over ssh: b (Connection refused); \
             c (Could not resolve hostname c)"
        );
    }
}

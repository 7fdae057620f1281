//! The measured topology as a Graphviz graph: a box per host (cores,
//! memory, accelerators), an arrow per measured address.

use super::facts::HostFacts;
use super::order::MeasuredLink;

pub fn render_dot(names: &[String], facts: &[HostFacts], links: &[MeasuredLink]) -> String {
    let mut out = String::from(
        "digraph huddle {\n  node [shape=box, fontname=\"monospace\"];\n  edge [fontname=\"monospace\", fontsize=10];\n",
    );
    for (i, name) in names.iter().enumerate() {
        let mut label = name.clone();
        if let Some(f) = facts.get(i) {
            if f.hostname != *name {
                label.push_str(&format!(" ({})", f.hostname));
            }
            label.push_str(&format!("\n{} cores, {}", f.cores, gib(f.mem_bytes)));
            for gpu in &f.gpus {
                label.push_str(&format!("\n{} {}", gpu.name, gib(gpu.mem_bytes)));
            }
        }
        out.push_str(&format!("  n{i} [label=\"{}\"];\n", escape(&label)));
    }
    for link in links {
        let label = format!(
            "{}\n{:.2} Gbit/s\n{:.0} us",
            link.addr, link.measured.gbps, link.measured.rtt_us
        );
        out.push_str(&format!(
            "  n{} -> n{} [label=\"{}\"];\n",
            link.from,
            link.to,
            escape(&label)
        ));
    }
    out.push_str("}\n");
    out
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::wire::Measurement;

    #[test]
    fn hosts_are_nodes_and_links_are_labelled_edges() {
        let facts = HostFacts {
            hostname: "box\"1".into(),
            cores: 8,
            mem_bytes: 16 << 30,
            interfaces: vec![],
            gpus: vec![],
        };
        let link = MeasuredLink {
            from: 1,
            to: 0,
            addr: "10.0.0.1".parse().unwrap(),
            measured: Measurement {
                rtt_us: 12.4,
                gbps: 9.5,
            },
        };
        let dot = render_dot(&["a".into(), "b".into()], &[facts.clone(), facts], &[link]);
        assert!(dot.starts_with("digraph huddle {"));
        assert!(dot.contains("n0 [label=\"a (box\\\"1)\\n8 cores, 16.0 GiB\"];"));
        assert!(dot.contains("n1 -> n0 [label=\"10.0.0.1\\n9.50 Gbit/s\\n12 us\"];"));
        assert!(dot.trim_end().ends_with('}'));
    }
}

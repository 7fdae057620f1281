//! How a pipeline's layers are divided among its stages: evenly, in
//! proportion to each stage's free memory (so a host with twice the memory
//! holds about twice the layers), or as the user lists them.
//!
//! The plan is made before any weight is read. Every rank must reach the
//! same plan: a stage's free memory is the least of its tensor ranks', and
//! that one number per stage is gathered over the pipeline group, so the
//! pipeline groups of every tensor rank see the same numbers.

use std::ops::Range;

use huddle_comm::Group;

use crate::error::LmError;
use crate::tp;

/// Test-only: this rank's free memory in MiB instead of the host's
/// MemAvailable, so one machine can pose as hosts of different sizes.
pub const FAKE_FREE_MEMORY_ENV: &str = "HUDDLE_TEST_FREE_MEMORY_MIB";

/// Stages whose free memory differs by less than this fraction split
/// evenly: ranks on equal hosts read slightly different numbers, and an
/// uneven split for that noise would only unbalance the pipeline.
const EVEN_WITHIN: f64 = 0.10;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PipelineSplit {
    /// As many layers per stage as possible alike.
    Even,
    /// In proportion to each stage's free memory (MemAvailable, shared
    /// among the ranks of a host); even when the stages' memories are
    /// within 10% of each other.
    #[default]
    Memory,
    /// Layer counts per stage, in stage order; they must add up to the
    /// model's layers.
    Layers(Vec<usize>),
}

/// Divides `num_layers` in proportion to `weights` (one per stage), each
/// stage at least one layer when there are enough layers (otherwise
/// evenly, some stages holding none). Largest remainders decide the
/// rounding; ties go to the earlier stage.
pub fn apportion(num_layers: usize, weights: &[f64]) -> Vec<Range<usize>> {
    let stages = weights.len().max(1);
    let total: f64 = weights.iter().filter(|w| w.is_finite() && **w > 0.0).sum();
    let usable = weights.len() == stages && total > 0.0 && weights.iter().all(|w| *w > 0.0);
    if num_layers < stages || !usable {
        return (0..stages)
            .map(|i| tp::balanced(num_layers, stages, i))
            .collect();
    }
    let quota: Vec<f64> = weights
        .iter()
        .map(|w| num_layers as f64 * w / total)
        .collect();
    let mut counts: Vec<usize> = quota.iter().map(|q| (q.floor() as usize).max(1)).collect();
    let gap = |counts: &[usize], i: usize| quota[i] - counts[i] as f64;
    while counts.iter().sum::<usize>() < num_layers {
        let i = (0..stages)
            .max_by(|&a, &b| gap(&counts, a).total_cmp(&gap(&counts, b)).then(b.cmp(&a)))
            .unwrap_or(0);
        counts[i] += 1;
    }
    while counts.iter().sum::<usize>() > num_layers {
        let i = (0..stages)
            .filter(|&i| counts[i] > 1)
            .min_by(|&a, &b| gap(&counts, a).total_cmp(&gap(&counts, b)).then(a.cmp(&b)))
            .unwrap_or(0);
        counts[i] -= 1;
    }
    ranges(&counts)
}

fn ranges(counts: &[usize]) -> Vec<Range<usize>> {
    let mut at = 0;
    counts
        .iter()
        .map(|&n| {
            at += n;
            at - n..at
        })
        .collect()
}

/// Every stage's layer range under `split`, the same on every rank of the
/// pipeline and tensor groups. [`PipelineSplit::Memory`] is collective
/// over both groups.
pub fn plan(
    num_layers: usize,
    split: &PipelineSplit,
    pipeline: &Group,
    tensor: &Group,
) -> Result<Vec<Range<usize>>, LmError> {
    let stages = pipeline.size();
    match split {
        _ if stages <= 1 => Ok(ranges(&[num_layers])),
        PipelineSplit::Even => Ok(apportion(num_layers, &vec![1.0; stages])),
        PipelineSplit::Layers(counts) => explicit(num_layers, counts, stages),
        PipelineSplit::Memory => {
            let memory = stage_free_memory(pipeline, tensor)?;
            let (lo, hi) = memory
                .iter()
                .fold((f64::MAX, 0f64), |(lo, hi), &m| (lo.min(m), hi.max(m)));
            let weights = if lo > 0.0 && hi <= lo * (1.0 + EVEN_WITHIN) {
                vec![1.0; stages]
            } else {
                memory.clone()
            };
            let plan = apportion(num_layers, &weights);
            tracing::info!(free_mib = ?memory, layers = ?plan, "pipeline stages sized by free memory");
            Ok(plan)
        }
    }
}

fn explicit(
    num_layers: usize,
    counts: &[usize],
    stages: usize,
) -> Result<Vec<Range<usize>>, LmError> {
    if counts.len() != stages {
        return Err(LmError::BadOption(format!(
            "{} layer counts given for {stages} pipeline stages",
            counts.len()
        )));
    }
    let sum: usize = counts.iter().sum();
    if sum != num_layers {
        return Err(LmError::BadOption(format!(
            "layer counts add up to {sum}, but the model has {num_layers} layers"
        )));
    }
    if counts.contains(&0) {
        return Err(LmError::BadOption(
            "every pipeline stage needs at least one layer".into(),
        ));
    }
    Ok(ranges(counts))
}

/// Each stage's free memory in MiB, in stage order: the least over the
/// stage's tensor ranks of this rank's share of its host's MemAvailable.
fn stage_free_memory(pipeline: &Group, tensor: &Group) -> Result<Vec<f64>, LmError> {
    let (_, ranks_here) = pipeline.local();
    let mut mine = [free_memory_mib()? / ranks_here.max(1) as f64];
    tensor.all_min(&mut mine).map_err(LmError::comm)?;
    let mut all = vec![0f64; pipeline.size()];
    pipeline
        .all_gather(&mine, &mut all)
        .map_err(LmError::comm)?;
    Ok(all)
}

/// The host's MemAvailable in MiB, or the test override.
fn free_memory_mib() -> Result<f64, LmError> {
    if let Ok(fake) = std::env::var(FAKE_FREE_MEMORY_ENV) {
        return fake.trim().parse::<f64>().map_err(|_| {
            LmError::BadOption(format!(
                "{FAKE_FREE_MEMORY_ENV}={fake:?} is not a number of MiB"
            ))
        });
    }
    let path = std::path::Path::new("/proc/meminfo");
    let text = std::fs::read_to_string(path).map_err(|source| LmError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    mem_available_mib(&text).ok_or_else(|| {
        LmError::BadOption("/proc/meminfo has no MemAvailable line; use an even split".into())
    })
}

fn mem_available_mib(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line
        .trim_start_matches("MemAvailable:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_split_like_the_even_split() {
        assert_eq!(apportion(30, &[1.0; 4]), vec![0..8, 8..16, 16..23, 23..30]);
        assert_eq!(apportion(30, &[5.0; 3]), vec![0..10, 10..20, 20..30]);
    }

    #[test]
    fn layers_follow_memory_in_proportion() {
        // 8 GiB and 16 GiB hosts: a third and two thirds of 30 layers.
        assert_eq!(apportion(30, &[8192.0, 16384.0]), vec![0..10, 10..30]);
        assert_eq!(apportion(24, &[1.0, 2.0, 3.0]), vec![0..4, 4..12, 12..24]);
        // Remainders go to the largest fractions: quotas 3.33, 3.33, 3.33.
        assert_eq!(apportion(10, &[1.0, 1.0, 1.0]), vec![0..4, 4..7, 7..10]);
    }

    #[test]
    fn every_stage_keeps_at_least_one_layer() {
        // A tiny host still gets one layer; the big one gives it up.
        assert_eq!(apportion(4, &[1.0, 1000.0]), vec![0..1, 1..4]);
        assert_eq!(apportion(3, &[1000.0, 1.0, 1.0]), vec![0..1, 1..2, 2..3]);
        for n in 3..40 {
            let plan = apportion(n, &[0.5, 100.0, 7.0]);
            assert!(plan.iter().all(|r| !r.is_empty()), "{n}: {plan:?}");
            assert_eq!(plan.last().map(|r| r.end), Some(n));
        }
    }

    #[test]
    fn fewer_layers_than_stages_or_bad_weights_split_evenly() {
        assert_eq!(apportion(2, &[1.0, 5.0, 9.0]), vec![0..1, 1..2, 2..2]);
        assert_eq!(apportion(4, &[0.0, 1.0]), vec![0..2, 2..4]);
        assert_eq!(apportion(4, &[f64::NAN, 1.0]), vec![0..2, 2..4]);
    }

    #[test]
    fn explicit_counts_must_cover_the_model_one_per_stage() {
        assert_eq!(explicit(30, &[10, 20], 2).unwrap(), vec![0..10, 10..30]);
        let e = explicit(30, &[10, 10], 2).unwrap_err().to_string();
        assert!(e.contains("add up to 20") && e.contains("30 layers"), "{e}");
        let e = explicit(30, &[30], 2).unwrap_err().to_string();
        assert!(e.contains("1 layer counts given for 2"), "{e}");
        let e = explicit(30, &[0, 30], 2).unwrap_err().to_string();
        assert!(e.contains("at least one layer"), "{e}");
    }

    #[test]
    fn mem_available_is_read_in_mib() {
        let text = "MemTotal:       16384000 kB\nMemAvailable:    8388608 kB\n";
        assert_eq!(mem_available_mib(text), Some(8192.0));
        assert_eq!(mem_available_mib("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn a_single_stage_holds_every_layer_without_asking_anyone() {
        let g = Group::single();
        let plan = plan(7, &PipelineSplit::Memory, &g, &g).unwrap();
        assert_eq!(plan, ranges(&[7]));
        assert_eq!(plan[0], 0..7);
    }
}

//! Rank 0 measures, at init, up to which message size the mesh beats the
//! ring on this job's links, and tells everyone: ranks must never pick an
//! algorithm on their own measurements, or they would run different ones.

use std::time::{Duration, Instant};

use crate::config::Algo;
use crate::error::Result;
use crate::group::Group;

/// Sizes tried, in bytes (f32 all_sum).
const SIZES: [usize; 4] = [4 << 10, 32 << 10, 256 << 10, 1 << 20];

fn best(g: &Group, buf: &mut [f32], runs: usize) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        g.all_sum(buf)?;
        best = best.min(t.elapsed());
    }
    Ok(best)
}

/// The mesh's upper size limit, identical on every rank.
pub(crate) fn mesh_max_bytes(world: &Group) -> Result<u64> {
    let (ring, mesh) = (world.with_algo(Algo::Ring), world.with_algo(Algo::Mesh));
    let mut limit = 0u64;
    let mut buf = vec![0f32; SIZES[SIZES.len() - 1] / 4];
    best(&mesh, &mut buf[..SIZES[0] / 4], 1)?;
    best(&ring, &mut buf[..SIZES[0] / 4], 1)?;
    let mut ring_won = false;
    // Every rank runs every size (the calls must match); only rank 0's
    // timings count.
    for size in SIZES {
        let b = &mut buf[..size / 4];
        let (m, r) = (best(&mesh, b, 2)?, best(&ring, b, 2)?);
        ring_won |= r < m;
        if !ring_won {
            limit = size as u64;
        }
    }
    let mut decided = [limit as i64];
    mesh.broadcast(&mut decided, 0)?;
    let limit = decided[0].max(0) as u64;
    tracing::debug!("rank {}: mesh up to {limit} bytes", world.rank());
    Ok(limit)
}

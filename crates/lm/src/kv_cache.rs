//! The key/value cache of every layer.
//!
//! Storage is one `[kv_heads, capacity, head_dim]` f32 array per layer
//! for keys and one for values, pre-allocated and grown in whole chunks
//! of [`CHUNK`] positions (at least a quarter more each time); new entries
//! are copied in place from the projections' token-major rows, so a
//! decode step never allocates, concatenates or copies the cache.
//!
//! Bounded cache (`max_kv_size`): like mlx-lm's `RotatingKVCache`, the
//! first [`KEEP`] positions (attention sinks) always stay, and once the
//! cache is full each new entry overwrites the oldest of the others (a
//! ring over slots `KEEP..max`). Slot order is then not position order;
//! attention does not care (softmax over keys is order-free) and the mask
//! is built from each slot's stored position. A multi-token step that does
//! not fit attends over the cached entries plus all its own tokens (one
//! temporary concatenation, per prompt chunk, never per decoded token),
//! then keeps the newest of them.

use crate::fused::attention::HeadRows;

/// Positions kept forever once the cache is bounded and full.
pub const KEEP: usize = 4;
/// Growth step of the storage, in positions.
pub const CHUNK: usize = 256;

/// How a step's tokens enter the cache, decided once for all layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Written first, then attention over slots `0..attend`.
    InPlace { attend: usize },
    /// Attention over the `cached` old slots plus the new tokens, written
    /// afterwards.
    Concat { cached: usize },
}

/// A contiguous run of new tokens `src..src + len` written at `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Write {
    slot: usize,
    src: usize,
    len: usize,
}

/// One forward step's plan: where the tokens go and what they attend to.
#[derive(Debug, Clone)]
pub struct Step {
    mode: Mode,
    writes: [Option<Write>; 3],
    tokens: usize,
    first_position: usize,
}

impl Step {
    pub fn first_position(&self) -> usize {
        self.first_position
    }
}

pub struct KvCache {
    kv_heads: usize,
    head_dim: usize,
    /// Keys and values of each layer, `[kv_heads, capacity, head_dim]`.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    capacity: usize,
    max: Option<usize>,
    /// Absolute position of each filled slot.
    positions: Vec<usize>,
    /// Next slot to write once the cache is full (in `KEEP..max`).
    cursor: usize,
    /// Positions seen so far: the next token's position.
    next_position: usize,
    /// Positions attended in a `Concat` step (old slots, then new).
    concat_positions: Vec<usize>,
    /// A `Concat` step's keys and values (old slots, then new tokens).
    concat: (Vec<f32>, Vec<f32>),
}

impl KvCache {
    /// `max_size`, when set, must exceed [`KEEP`].
    pub fn new(
        num_layers: usize,
        kv_heads: usize,
        head_dim: usize,
        max_size: Option<usize>,
    ) -> candle_core::Result<Self> {
        let layers = (0..num_layers).map(|_| (Vec::new(), Vec::new())).collect();
        Ok(KvCache {
            kv_heads,
            head_dim,
            layers,
            capacity: 0,
            max: max_size,
            positions: Vec::new(),
            cursor: 0,
            next_position: 0,
            concat_positions: Vec::new(),
            concat: (Vec::new(), Vec::new()),
        })
    }

    /// The position the next token will take.
    pub fn len(&self) -> usize {
        self.next_position
    }

    pub fn is_empty(&self) -> bool {
        self.next_position == 0
    }

    /// Entries actually held (at most `max_size`).
    pub fn stored(&self) -> usize {
        self.positions.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Plans a step of `tokens` new positions and grows the storage if it
    /// must.
    pub fn begin(&mut self, tokens: usize) -> candle_core::Result<Step> {
        let used = self.positions.len();
        let fits = self.max.is_none_or(|m| used + tokens <= m);
        let first_position = self.next_position;
        let mut writes = [None; 3];
        let mode = if fits {
            self.reserve(used + tokens)?;
            writes[0] = Some(Write {
                slot: used,
                src: 0,
                len: tokens,
            });
            Mode::InPlace {
                attend: used + tokens,
            }
        } else if tokens == 1 && self.max == Some(used) {
            writes[0] = Some(Write {
                slot: self.cursor,
                src: 0,
                len: 1,
            });
            Mode::InPlace { attend: used }
        } else {
            let max = self.max.unwrap_or(usize::MAX);
            self.reserve(max)?;
            self.plan_overflow(tokens, &mut writes);
            Mode::Concat { cached: used }
        };
        if let Mode::Concat { cached } = mode {
            self.concat_positions.clear();
            self.concat_positions
                .extend_from_slice(&self.positions[..cached]);
            self.concat_positions
                .extend(first_position..first_position + tokens);
        }
        let step = Step {
            mode,
            writes,
            tokens,
            first_position,
        };
        self.record_positions(&step);
        Ok(step)
    }

    /// The writes of a step that does not fit: first any free sink slots,
    /// then the newest tokens into the ring, oldest entries overwritten.
    fn plan_overflow(&self, tokens: usize, writes: &mut [Option<Write>; 3]) {
        let max = self.max.unwrap_or(usize::MAX);
        let used = self.positions.len();
        let mut n = 0;
        let sink = tokens.min(KEEP.saturating_sub(used));
        if sink > 0 {
            writes[n] = Some(Write {
                slot: used,
                src: 0,
                len: sink,
            });
            n += 1;
        }
        let rest = tokens - sink;
        let tail = rest.min(max - KEEP);
        let mut src = tokens - tail;
        let mut slot = if used + sink < max {
            used + sink
        } else {
            self.cursor
        };
        let mut left = tail;
        while left > 0 && n < writes.len() {
            let run = left.min(max - slot);
            writes[n] = Some(Write {
                slot,
                src,
                len: run,
            });
            n += 1;
            src += run;
            left -= run;
            slot = if slot + run == max { KEEP } else { slot + run };
        }
    }

    fn record_positions(&mut self, step: &Step) {
        let max = self.max.unwrap_or(usize::MAX);
        for w in step.writes.iter().flatten() {
            for i in 0..w.len {
                let slot = w.slot + i;
                let pos = step.first_position + w.src + i;
                if slot < self.positions.len() {
                    self.positions[slot] = pos;
                } else {
                    self.positions.push(pos);
                }
                let next = slot + 1;
                self.cursor = if next >= max { KEEP } else { next };
            }
        }
        self.next_position += step.tokens;
    }

    fn reserve(&mut self, needed: usize) -> candle_core::Result<()> {
        if needed <= self.capacity {
            return Ok(());
        }
        // Whole chunks, at least a quarter more than now: growing copies
        // the cache, and geometric steps keep that O(1) per position.
        let mut capacity = needed
            .max(self.capacity + self.capacity / 4)
            .div_ceil(CHUNK)
            * CHUNK;
        if let Some(m) = self.max {
            capacity = capacity.min(m).max(needed.min(m));
        }
        let (heads, hd, old) = (self.kv_heads, self.head_dim, self.capacity);
        let grow = |data: &mut Vec<f32>| {
            let mut fresh = vec![0f32; heads * capacity * hd];
            for h in 0..heads {
                fresh[h * capacity * hd..][..old * hd]
                    .copy_from_slice(&data[h * old * hd..][..old * hd]);
            }
            *data = fresh;
        };
        for (k, v) in &mut self.layers {
            grow(k);
            grow(v);
        }
        tracing::debug!(capacity, "kv cache grown");
        self.capacity = capacity;
        Ok(())
    }

    /// Stores layer `layer`'s new keys and values (`[t, kv_heads *
    /// head_dim]`, token-major as the projections write them) and returns
    /// the keys and values to attend over.
    pub fn update(
        &mut self,
        layer: usize,
        step: &Step,
        k: &[f32],
        v: &[f32],
    ) -> candle_core::Result<(HeadRows<'_>, HeadRows<'_>)> {
        let (heads, hd, cap, t) = (self.kv_heads, self.head_dim, self.capacity, step.tokens);
        if k.len() != t * heads * hd || v.len() != k.len() {
            candle_core::bail!(
                "kv cache: {t} tokens of {heads} heads x {hd} need {} keys and values, got {} and {}",
                t * heads * hd,
                k.len(),
                v.len()
            )
        }
        let Some((kc, vc)) = self.layers.get_mut(layer) else {
            candle_core::bail!("kv cache has no layer {layer}")
        };
        match step.mode {
            Mode::InPlace { attend } => {
                write_steps(kc, k, step, heads, hd, cap);
                write_steps(vc, v, step, heads, hd, cap);
                Ok((
                    HeadRows::contiguous(kc, heads, attend, hd, cap * hd),
                    HeadRows::contiguous(vc, heads, attend, hd, cap * hd),
                ))
            }
            Mode::Concat { cached } => {
                let seen = cached + t;
                let (ck, cv) = &mut self.concat;
                for (dst, cache, new) in [(&mut *ck, &*kc, k), (&mut *cv, &*vc, v)] {
                    dst.clear();
                    dst.resize(heads * seen * hd, 0.0);
                    for h in 0..heads {
                        let head = &mut dst[h * seen * hd..][..seen * hd];
                        head[..cached * hd].copy_from_slice(&cache[h * cap * hd..][..cached * hd]);
                        for i in 0..t {
                            head[(cached + i) * hd..][..hd]
                                .copy_from_slice(&new[(i * heads + h) * hd..][..hd]);
                        }
                    }
                }
                write_steps(kc, k, step, heads, hd, cap);
                write_steps(vc, v, step, heads, hd, cap);
                Ok((
                    HeadRows::contiguous(ck, heads, seen, hd, seen * hd),
                    HeadRows::contiguous(cv, heads, seen, hd, seen * hd),
                ))
            }
        }
    }

    /// Writes the additive attention mask for `step` (`[tokens, keys]`,
    /// 0 or -inf) into `mask` and returns whether it hides anything (when
    /// not, every query may see every key and `mask` is left empty).
    pub fn mask(&self, step: &Step, window: Option<usize>, mask: &mut Vec<f32>) -> bool {
        mask.clear();
        let keys: &[usize] = match step.mode {
            Mode::InPlace { attend } => &self.positions[..attend],
            Mode::Concat { .. } => &self.concat_positions,
        };
        if step.tokens == 1 && window.is_none() {
            return false;
        }
        let mut any_hidden = false;
        for q in step.first_position..step.first_position + step.tokens {
            for &k in keys {
                let visible = k <= q && window.is_none_or(|w| q - k < w);
                any_hidden |= !visible;
                mask.push(if visible { 0.0 } else { f32::NEG_INFINITY });
            }
        }
        if !any_hidden {
            mask.clear();
        }
        any_hidden
    }

    /// Keeps positions `0..len` (see [`crate::Model::truncate_kv`]).
    pub fn truncate(&mut self, len: usize) -> candle_core::Result<()> {
        if len >= self.next_position {
            return Ok(());
        }
        let in_order = self.positions.iter().enumerate().all(|(i, &p)| i == p);
        if in_order {
            self.positions.truncate(len);
        } else {
            self.compact(len)?;
        }
        self.cursor = self.positions.len();
        self.next_position = len;
        Ok(())
    }

    /// Rebuilds the storage with the entries below `len`, in position order.
    fn compact(&mut self, len: usize) -> candle_core::Result<()> {
        let mut kept: Vec<(usize, usize)> = self
            .positions
            .iter()
            .enumerate()
            .filter(|(_, p)| **p < len)
            .map(|(slot, p)| (*p, slot))
            .collect();
        kept.sort_unstable();
        let slots: Vec<usize> = kept.iter().map(|(_, s)| *s).collect();
        let (heads, hd, cap) = (self.kv_heads, self.head_dim, self.capacity);
        let pick = |data: &mut Vec<f32>| {
            let mut fresh = vec![0f32; heads * cap * hd];
            for h in 0..heads {
                for (to, &from) in slots.iter().enumerate() {
                    fresh[(h * cap + to) * hd..][..hd]
                        .copy_from_slice(&data[(h * cap + from) * hd..][..hd]);
                }
            }
            *data = fresh;
        };
        for (k, v) in &mut self.layers {
            pick(k);
            pick(v);
        }
        self.positions = kept.into_iter().map(|(p, _)| p).collect();
        Ok(())
    }
}

/// Copies a step's new tokens (`[t, heads * head_dim]`) into a layer's
/// `[heads, cap, head_dim]` storage at the step's slots.
fn write_steps(cache: &mut [f32], new: &[f32], step: &Step, heads: usize, hd: usize, cap: usize) {
    for w in step.writes.iter().flatten() {
        for i in 0..w.len {
            let (slot, src) = (w.slot + i, w.src + i);
            for h in 0..heads {
                cache[(h * cap + slot) * hd..][..hd]
                    .copy_from_slice(&new[(src * heads + h) * hd..][..hd]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(cache: &mut KvCache, t: usize) -> Vec<f32> {
        // One kv head, head_dim 1: the stored value is the position.
        let step = cache.begin(t).unwrap();
        let pos = step.first_position();
        let new: Vec<f32> = (pos..pos + t).map(|p| p as f32).collect();
        let (k, _) = cache.update(0, &step, &new, &new).unwrap();
        (0..k.len).map(|i| k.row(0, i)[0]).collect()
    }

    #[test]
    fn grows_in_chunks_and_returns_all_positions() {
        let mut c = KvCache::new(1, 1, 1, None).unwrap();
        assert_eq!(push(&mut c, 3), vec![0., 1., 2.]);
        assert_eq!(c.capacity(), CHUNK);
        assert_eq!(push(&mut c, 1), vec![0., 1., 2., 3.]);
        push(&mut c, CHUNK);
        assert_eq!(c.capacity(), 2 * CHUNK);
        assert_eq!(c.len(), CHUNK + 4);
    }

    #[test]
    fn bounded_cache_keeps_first_four_and_newest() {
        let mut c = KvCache::new(1, 1, 1, Some(8)).unwrap();
        push(&mut c, 8);
        // Full: position 8 overwrites the oldest non-sink entry (4).
        let mut seen = push(&mut c, 1);
        seen.sort_by(f32::total_cmp);
        assert_eq!(seen, vec![0., 1., 2., 3., 5., 6., 7., 8.]);
        let mut seen = push(&mut c, 1);
        seen.sort_by(f32::total_cmp);
        assert_eq!(seen, vec![0., 1., 2., 3., 6., 7., 8., 9.]);
        assert_eq!(c.stored(), 8);
    }

    #[test]
    fn overflowing_prompt_attends_to_all_then_keeps_sinks_and_tail() {
        let mut c = KvCache::new(1, 1, 1, Some(8)).unwrap();
        let seen = push(&mut c, 12);
        assert_eq!(seen.len(), 12);
        let mut held = c.positions.clone();
        held.sort_unstable();
        assert_eq!(held, vec![0, 1, 2, 3, 8, 9, 10, 11]);
        let mut seen = push(&mut c, 1);
        seen.sort_by(f32::total_cmp);
        assert_eq!(seen, vec![0., 1., 2., 3., 9., 10., 11., 12.]);
    }

    #[test]
    fn causal_and_window_masks_hide_the_right_keys() {
        let mut c = KvCache::new(1, 1, 1, None).unwrap();
        let step = c.begin(3).unwrap();
        let mut m = Vec::new();
        assert!(c.mask(&step, None, &mut m));
        let inf = f32::NEG_INFINITY;
        assert_eq!(m, vec![0., inf, inf, 0., 0., inf, 0., 0., 0.]);
        assert!(c.mask(&step, Some(2), &mut m));
        assert_eq!(m, vec![0., inf, inf, 0., 0., inf, inf, 0., 0.]);
        let step = c.begin(1).unwrap();
        assert!(!c.mask(&step, None, &mut m));
        assert!(m.is_empty());
    }

    #[test]
    fn truncate_restores_earlier_state_even_after_rotation() {
        let mut c = KvCache::new(1, 1, 1, None).unwrap();
        push(&mut c, 5);
        c.truncate(2).unwrap();
        assert_eq!(push(&mut c, 1), vec![0., 1., 2.]);

        let mut c = KvCache::new(1, 1, 1, Some(6)).unwrap();
        push(&mut c, 6);
        push(&mut c, 1);
        push(&mut c, 1); // holds 0..4, 6, 7
        c.truncate(7).unwrap();
        assert_eq!(c.len(), 7);
        assert_eq!(push(&mut c, 1), vec![0., 1., 2., 3., 6., 7.]);
        c.truncate(0).unwrap();
        assert_eq!(push(&mut c, 2), vec![0., 1.]);
    }

    #[test]
    fn token_major_rows_land_in_their_heads_in_place_and_concatenated() {
        // 2 heads of 3 values; value = 100 * position + 10 * head + d.
        let (heads, hd) = (2, 3);
        let rows = |pos: usize, t: usize| -> Vec<f32> {
            (pos..pos + t)
                .flat_map(|p| (0..heads).flat_map(move |h| (0..hd).map(move |d| (p, h, d))))
                .map(|(p, h, d)| (100 * p + 10 * h + d) as f32)
                .collect()
        };
        let check = |k: &HeadRows, positions: &[usize]| {
            assert_eq!(k.len, positions.len());
            for h in 0..heads {
                for (i, &p) in positions.iter().enumerate() {
                    let want: Vec<f32> = (0..hd).map(|d| (100 * p + 10 * h + d) as f32).collect();
                    assert_eq!(k.row(h, i), &want[..], "head {h} row {i}");
                }
            }
        };
        let mut c = KvCache::new(1, heads, hd, Some(6)).unwrap();
        let step = c.begin(4).unwrap();
        let new = rows(0, 4);
        let (k, v) = c.update(0, &step, &new, &new).unwrap();
        check(&k, &[0, 1, 2, 3]);
        check(&v, &[0, 1, 2, 3]);
        // 3 more do not fit in 6: attended concatenated, then kept.
        let step = c.begin(3).unwrap();
        let new = rows(4, 3);
        let (k, _) = c.update(0, &step, &new, &new).unwrap();
        check(&k, &[0, 1, 2, 3, 4, 5, 6]);
        let step = c.begin(1).unwrap();
        let new = rows(7, 1);
        let (k, _) = c.update(0, &step, &new, &new).unwrap();
        let mut seen: Vec<usize> = (0..k.len).map(|i| k.row(0, i)[0] as usize / 100).collect();
        let order = seen.clone();
        check(&k, &order);
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2, 3, 6, 7]);
        assert!(c.update(0, &step, &new[..3], &new).is_err());
    }
}

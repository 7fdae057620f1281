//! Scaled dot-product attention over the KV cache on plain f32 slices:
//! scores, mask, softmax and the weighted sum of values in one pass per
//! (query row, head), with no tensor temporaries.
//!
//! Every (row, head) is computed by the same code whatever the number of
//! rows in the step, so a prompt fed in pieces attends exactly as the
//! prompt in one pass, and a decode step exactly as the last row of a
//! prompt. Masked keys (-inf) are skipped: their softmax weight is exactly
//! zero, so skipping them changes no bit of the result.

use std::cell::RefCell;

use huddle_kernels::{Kernels, ThreadPool};

/// A `[heads, len, head_dim]` f32 array whose rows (`head_dim` values) are
/// contiguous, with any distances between rows and heads: a cache grown
/// past `len` (`[heads, capacity, head_dim]`), or a projection's
/// token-major output (`[len, heads * head_dim]`).
#[derive(Clone, Copy)]
pub struct HeadRows<'a> {
    pub data: &'a [f32],
    pub heads: usize,
    pub len: usize,
    pub head_dim: usize,
    /// Elements from one row of a head to its next.
    pub row_stride: usize,
    /// Elements from one head's first row to the next head's.
    pub head_stride: usize,
}

impl<'a> HeadRows<'a> {
    /// Heads of contiguous rows, `head_stride` elements apart.
    pub fn contiguous(
        data: &'a [f32],
        heads: usize,
        len: usize,
        head_dim: usize,
        head_stride: usize,
    ) -> Self {
        HeadRows {
            data,
            heads,
            len,
            head_dim,
            row_stride: head_dim,
            head_stride,
        }
    }

    /// Whether every row lies inside `data`.
    fn fits(&self) -> bool {
        if self.heads == 0 || self.len == 0 {
            return true;
        }
        let last = (self.heads - 1)
            .checked_mul(self.head_stride)
            .and_then(|h| h.checked_add((self.len - 1).checked_mul(self.row_stride)?))
            .and_then(|r| r.checked_add(self.head_dim));
        self.row_stride >= self.head_dim && last.is_some_and(|end| end <= self.data.len())
    }

    pub(crate) fn row(&self, head: usize, i: usize) -> &[f32] {
        let at = head * self.head_stride + i * self.row_stride;
        &self.data[at..at + self.head_dim]
    }
}

/// One step's attention problem: queries `[heads, t, head_dim]`
/// (contiguous), keys and values over `seen` positions, an optional
/// additive mask `[t, seen]`, and the KV head of each query head.
pub struct Problem<'a> {
    pub queries: HeadRows<'a>,
    pub keys: HeadRows<'a>,
    pub values: HeadRows<'a>,
    pub mask: Option<&'a [f32]>,
    pub kv_of_head: &'a [usize],
    pub scale: f32,
}

/// Why a [`Problem`] cannot be computed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttentionError {
    #[error("attention: {what} has shape that does not match its data or the queries")]
    Shape { what: &'static str },
    #[error("attention: query head {head} maps to KV head {kv}, but there are {kv_heads}")]
    KvHead {
        head: usize,
        kv: usize,
        kv_heads: usize,
    },
    #[error("attention output holds {actual} values, expected {expected}")]
    Output { expected: usize, actual: usize },
}

thread_local! {
    // Each pool thread's score buffer, grown to the longest context seen.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Problem<'_> {
    fn check(&self, out_len: usize) -> Result<(), AttentionError> {
        let (q, k, v) = (&self.queries, &self.keys, &self.values);
        let hd = q.head_dim;
        if !q.fits() {
            return Err(AttentionError::Shape { what: "queries" });
        }
        if !k.fits() || k.head_dim != hd {
            return Err(AttentionError::Shape { what: "keys" });
        }
        if !v.fits() || v.head_dim != hd || v.len != k.len || v.heads != k.heads {
            return Err(AttentionError::Shape { what: "values" });
        }
        if self.kv_of_head.len() != q.heads {
            return Err(AttentionError::Shape { what: "head map" });
        }
        if let Some((head, &kv)) = self
            .kv_of_head
            .iter()
            .enumerate()
            .find(|&(_, &kv)| kv >= k.heads)
        {
            return Err(AttentionError::KvHead {
                head,
                kv,
                kv_heads: k.heads,
            });
        }
        if self.mask.is_some_and(|m| m.len() != q.len * k.len) {
            return Err(AttentionError::Shape { what: "mask" });
        }
        let expected = q.len * q.heads * hd;
        if out_len != expected {
            return Err(AttentionError::Output {
                expected,
                actual: out_len,
            });
        }
        Ok(())
    }

    /// Writes `[t, heads * head_dim]` (query rows, then heads) into `out`,
    /// splitting the (row, head) pairs over `pool`.
    pub fn run(
        &self,
        kernels: &Kernels,
        pool: &ThreadPool,
        out: &mut [f32],
    ) -> Result<(), AttentionError> {
        self.check(out.len())?;
        let (t, heads, hd) = (self.queries.len, self.queries.heads, self.queries.head_dim);
        let ptr = huddle_kernels::DisjointOut::new(out);
        let pairs = t * heads;
        let chunk = pairs.div_ceil(pool.threads() * 4).max(1);
        pool.parallel_for(pairs, chunk, |range| {
            SCORES.with(|scores| {
                let mut scores = scores.borrow_mut();
                for pair in range {
                    let (i, h) = (pair / heads, pair % heads);
                    // SAFETY: pair < t * heads, so this range lies inside
                    // `out` (checked above) and belongs to this pair alone.
                    let row =
                        unsafe { std::slice::from_raw_parts_mut(ptr.at((i * heads + h) * hd), hd) };
                    self.one(kernels, i, h, &mut scores, row);
                }
            });
        });
        Ok(())
    }

    /// Query row `i` of head `h` into `out` (`head_dim` values).
    fn one(&self, kernels: &Kernels, i: usize, h: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
        let seen = self.keys.len;
        let kv = self.kv_of_head[h];
        let q = self.queries.row(h, i);
        let mask = self.mask.map(|m| &m[i * seen..(i + 1) * seen]);
        scores.clear();
        scores.resize(seen, f32::NEG_INFINITY);
        let mut max = f32::NEG_INFINITY;
        for (s, score) in scores.iter_mut().enumerate() {
            let bias = mask.map_or(0.0, |m| m[s]);
            if bias == f32::NEG_INFINITY {
                continue;
            }
            let v = (kernels.f32_f32)(q, self.keys.row(kv, s)) * self.scale + bias;
            *score = v;
            max = max.max(v);
        }
        out.fill(0.0);
        if max == f32::NEG_INFINITY {
            // Every key masked: no weights (candle's softmax would give NaN).
            return;
        }
        let mut sum = 0f32;
        for score in scores.iter_mut() {
            if *score != f32::NEG_INFINITY {
                *score = (*score - max).exp();
                sum += *score;
            }
        }
        let inv = 1.0 / sum;
        for (s, &w) in scores.iter().enumerate() {
            if w == f32::NEG_INFINITY {
                continue;
            }
            let p = w * inv;
            for (o, &v) in out.iter_mut().zip(self.values.row(kv, s)) {
                *o += p * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed * 97);
                ((x >> 8) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn rows(data: &[f32], heads: usize, len: usize, hd: usize, stride: usize) -> HeadRows<'_> {
        HeadRows::contiguous(data, heads, len, hd, stride)
    }

    /// Plain f64 attention of query row `i`, head `h`.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (t, seen, hd, stride): (usize, usize, usize, usize),
        (i, h, kv): (usize, usize, usize),
        mask: &[f32],
    ) -> Vec<f64> {
        let qi = &q[(h * t + i) * hd..][..hd];
        let scores: Vec<f64> = (0..seen)
            .map(|s| {
                let ks = &k[kv * stride + s * hd..][..hd];
                let d: f64 = qi.iter().zip(ks).map(|(a, b)| *a as f64 * *b as f64).sum();
                d / (hd as f64).sqrt() + mask[i * seen + s] as f64
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..hd)
            .map(|d| {
                (0..seen)
                    .map(|s| e[s] / sum * v[kv * stride + s * hd + d] as f64)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn causal_gqa_attention_matches_f64_reference_and_is_row_invariant() {
        let (heads, kv_heads, hd, t, cap) = (6, 2, 24, 7, 11);
        let kv_of_head: Vec<usize> = (0..heads).map(|h| h / 3).collect();
        let q = numbers(heads * t * hd, 1);
        let k = numbers(kv_heads * cap * hd, 2);
        let v = numbers(kv_heads * cap * hd, 3);
        // Causal over the first t positions of a cache with spare capacity.
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |s| if s <= i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let kernels = Kernels::best();
        let pool = ThreadPool::new(3);
        let problem = Problem {
            queries: rows(&q, heads, t, hd, t * hd),
            keys: rows(&k, kv_heads, t, hd, cap * hd),
            values: rows(&v, kv_heads, t, hd, cap * hd),
            mask: Some(&mask),
            kv_of_head: &kv_of_head,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let mut out = vec![f32::NAN; t * heads * hd];
        problem.run(kernels, &pool, &mut out).unwrap();
        for i in 0..t {
            for h in 0..heads {
                let want = reference(&q, &k, &v, (t, t, hd, cap * hd), (i, h, h / 3), &mask);
                let got = &out[(i * heads + h) * hd..][..hd];
                for (g, w) in got.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() < 1e-5, "row {i} head {h}: {g} vs {w}");
                }
            }
        }
        // The last row alone, as a decode step over the first t keys: the
        // same bits as in the batch.
        let last: Vec<f32> = (0..heads)
            .flat_map(|h| q[(h * t + t - 1) * hd..][..hd].to_vec())
            .collect();
        let decode = Problem {
            queries: rows(&last, heads, 1, hd, hd),
            mask: None,
            ..problem
        };
        let mut one = vec![0.0; heads * hd];
        decode.run(kernels, &ThreadPool::new(1), &mut one).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one), bits(&out[(t - 1) * heads * hd..]));
        // Token-major queries (`[t, heads * hd]`, as a projection writes
        // them) through strides: the same bits.
        let token_major: Vec<f32> = (0..t)
            .flat_map(|i| (0..heads).flat_map(move |h| (0..hd).map(move |d| (i, h, d))))
            .map(|(i, h, d)| q[(h * t + i) * hd + d])
            .collect();
        let strided = Problem {
            queries: HeadRows {
                row_stride: heads * hd,
                head_stride: hd,
                ..rows(&token_major, heads, t, hd, hd)
            },
            ..problem
        };
        let mut again = vec![0.0; t * heads * hd];
        strided.run(kernels, &pool, &mut again).unwrap();
        assert_eq!(bits(&again), bits(&out));
    }

    #[test]
    fn inconsistent_shapes_are_errors() {
        let q = numbers(2 * 4, 1);
        let k = numbers(4 * 3, 2);
        let p = Problem {
            queries: rows(&q, 2, 1, 4, 4),
            keys: rows(&k, 1, 3, 4, 12),
            values: rows(&k, 1, 3, 4, 12),
            mask: None,
            kv_of_head: &[0, 1],
            scale: 1.0,
        };
        let pool = ThreadPool::new(1);
        let mut out = vec![0.0; 8];
        assert_eq!(
            p.run(Kernels::best(), &pool, &mut out),
            Err(AttentionError::KvHead {
                head: 1,
                kv: 1,
                kv_heads: 1
            })
        );
        let p = Problem {
            kv_of_head: &[0, 0],
            ..p
        };
        assert!(matches!(
            p.run(Kernels::best(), &pool, &mut out[..7]),
            Err(AttentionError::Output { .. })
        ));
        let p = Problem {
            keys: rows(&k, 1, 4, 4, 12),
            ..p
        };
        assert!(matches!(
            p.run(Kernels::best(), &pool, &mut out),
            Err(AttentionError::Shape { .. })
        ));
    }
}

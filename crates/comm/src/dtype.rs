//! Element types the collectives move, and how each one is reduced.
//!
//! Reductions fold `acc = combine(acc, next)`; the caller decides the order
//! of the contributions, which is what makes results bit-identical across
//! algorithms (see `algo::layout`).

use half::{bf16, f16};

/// The element type of a buffer, as carried in every message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DType {
    F32 = 1,
    F16 = 2,
    BF16 = 3,
    F64 = 4,
    I32 = 5,
    I64 = 6,
    U8 = 7,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F64 | DType::I64 => 8,
            DType::U8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F64 => "f64",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
        }
    }

    pub(crate) fn from_u8(v: u8) -> Option<DType> {
        Some(match v {
            1 => DType::F32,
            2 => DType::F16,
            3 => DType::BF16,
            4 => DType::F64,
            5 => DType::I32,
            6 => DType::I64,
            7 => DType::U8,
            _ => return None,
        })
    }
}

/// How contributions of several ranks are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReduceOp {
    Sum = 1,
    Max = 2,
    Min = 3,
    Prod = 4,
}

impl ReduceOp {
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::Prod => "prod",
        }
    }

    pub(crate) fn from_u8(v: u8) -> Option<ReduceOp> {
        Some(match v {
            1 => ReduceOp::Sum,
            2 => ReduceOp::Max,
            3 => ReduceOp::Min,
            4 => ReduceOp::Prod,
            _ => return None,
        })
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A plain numeric type the collectives can move and reduce.
///
/// Sealed: the crate reinterprets buffers of these types as bytes, which is
/// only sound for types without padding or invalid bit patterns.
pub trait Element:
    Copy + Send + Sync + PartialEq + std::fmt::Debug + 'static + sealed::Sealed
{
    const DTYPE: DType;
    /// `acc` combined with `next`; integers wrap instead of overflowing.
    fn combine(op: ReduceOp, acc: Self, next: Self) -> Self;
}

macro_rules! float_element {
    ($t:ty, $d:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = $d;
            #[inline(always)]
            fn combine(op: ReduceOp, acc: Self, next: Self) -> Self {
                match op {
                    ReduceOp::Sum => acc + next,
                    ReduceOp::Max => acc.max(next),
                    ReduceOp::Min => acc.min(next),
                    ReduceOp::Prod => acc * next,
                }
            }
        }
    };
}

macro_rules! int_element {
    ($t:ty, $d:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = $d;
            #[inline(always)]
            fn combine(op: ReduceOp, acc: Self, next: Self) -> Self {
                match op {
                    ReduceOp::Sum => acc.wrapping_add(next),
                    ReduceOp::Max => acc.max(next),
                    ReduceOp::Min => acc.min(next),
                    ReduceOp::Prod => acc.wrapping_mul(next),
                }
            }
        }
    };
}

float_element!(f32, DType::F32);
float_element!(f64, DType::F64);
int_element!(i32, DType::I32);
int_element!(i64, DType::I64);
int_element!(u8, DType::U8);

// Half types are combined in f32 and rounded once per step, which is
// deterministic because every rank folds in the same order.
macro_rules! half_element {
    ($t:ty, $d:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = $d;
            #[inline(always)]
            fn combine(op: ReduceOp, acc: Self, next: Self) -> Self {
                let (a, b) = (acc.to_f32(), next.to_f32());
                <$t>::from_f32(match op {
                    ReduceOp::Sum => a + b,
                    ReduceOp::Max => a.max(b),
                    ReduceOp::Min => a.min(b),
                    ReduceOp::Prod => a * b,
                })
            }
        }
    };
}

half_element!(f16, DType::F16);
half_element!(bf16, DType::BF16);

/// `acc[i] = combine(acc[i], next[i])`, monomorphised per op so the inner
/// loop vectorises.
pub(crate) fn reduce_into<T: Element>(op: ReduceOp, acc: &mut [T], next: &[T]) {
    #[inline(always)]
    fn run<T: Element>(acc: &mut [T], next: &[T], f: impl Fn(T, T) -> T) {
        for (a, b) in acc.iter_mut().zip(next) {
            *a = f(*a, *b);
        }
    }
    match op {
        ReduceOp::Sum => run(acc, next, |a, b| T::combine(ReduceOp::Sum, a, b)),
        ReduceOp::Max => run(acc, next, |a, b| T::combine(ReduceOp::Max, a, b)),
        ReduceOp::Min => run(acc, next, |a, b| T::combine(ReduceOp::Min, a, b)),
        ReduceOp::Prod => run(acc, next, |a, b| T::combine(ReduceOp::Prod, a, b)),
    }
}

/// `out[i] = combine(first[i], out[i])`: folds a received prefix into the
/// local contribution, keeping the prefix first in the order.
pub(crate) fn reduce_prefix_into<T: Element>(op: ReduceOp, prefix: &[T], out: &mut [T]) {
    #[inline(always)]
    fn run<T: Element>(prefix: &[T], out: &mut [T], f: impl Fn(T, T) -> T) {
        for (o, p) in out.iter_mut().zip(prefix) {
            *o = f(*p, *o);
        }
    }
    match op {
        ReduceOp::Sum => run(prefix, out, |a, b| T::combine(ReduceOp::Sum, a, b)),
        ReduceOp::Max => run(prefix, out, |a, b| T::combine(ReduceOp::Max, a, b)),
        ReduceOp::Min => run(prefix, out, |a, b| T::combine(ReduceOp::Min, a, b)),
        ReduceOp::Prod => run(prefix, out, |a, b| T::combine(ReduceOp::Prod, a, b)),
    }
}

/// Folds incoming bytes into a buffer as they arrive (dst = op(src, dst)
/// per element, the order of [`reduce_prefix_into`]), so a receive from
/// shared memory reduces straight out of the ring instead of copying
/// into scratch first.
#[derive(Clone, Copy)]
pub(crate) struct Fold {
    run: unsafe fn(ReduceOp, *const u8, *mut u8, usize),
    op: ReduceOp,
    /// Bytes per element: folds go by whole elements.
    pub elem: usize,
}

impl Fold {
    pub fn of<T: Element>(op: ReduceOp) -> Fold {
        Fold {
            run: fold_raw::<T>,
            op,
            elem: size_of::<T>(),
        }
    }

    /// # Safety
    /// `src` readable for `n` bytes (any alignment); `dst` writable for
    /// `n` bytes and aligned for the element type; `n` a multiple of
    /// `elem`; the two do not overlap.
    pub unsafe fn apply(&self, src: *const u8, dst: *mut u8, n: usize) {
        // SAFETY: forwarded.
        unsafe { (self.run)(self.op, src, dst, n / self.elem) }
    }
}

/// # Safety
/// As for [`Fold::apply`], with `count` elements.
unsafe fn fold_raw<T: Element>(op: ReduceOp, src: *const u8, dst: *mut u8, count: usize) {
    #[inline(always)]
    fn run<T: Element>(src: *const T, out: &mut [T], f: impl Fn(T, T) -> T) {
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: `src` holds `out.len()` elements (caller's contract).
            let p = unsafe { src.add(i).read_unaligned() };
            *o = f(p, *o);
        }
    }
    // SAFETY: per the contract, `dst` is `count` aligned elements.
    let out = unsafe { std::slice::from_raw_parts_mut(dst.cast::<T>(), count) };
    let src = src.cast::<T>();
    match op {
        ReduceOp::Sum => run(src, out, |a, b| T::combine(ReduceOp::Sum, a, b)),
        ReduceOp::Max => run(src, out, |a, b| T::combine(ReduceOp::Max, a, b)),
        ReduceOp::Min => run(src, out, |a, b| T::combine(ReduceOp::Min, a, b)),
        ReduceOp::Prod => run(src, out, |a, b| T::combine(ReduceOp::Prod, a, b)),
    }
}

/// The bytes of a buffer of elements.
pub(crate) fn as_bytes<T: Element>(v: &[T]) -> &[u8] {
    // SAFETY: Element is sealed to plain numeric types without padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

pub(crate) fn as_bytes_mut<T: Element>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as above, and every bit pattern is a valid element.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Elements laid over a word-aligned scratch buffer.
pub(crate) fn words_as_mut<T: Element>(words: &mut [u64], len: usize) -> &mut [T] {
    let size = std::mem::size_of::<T>();
    assert!(len * size <= words.len() * 8, "scratch buffer too small");
    // SAFETY: u64 alignment covers every element type; any bit pattern is valid.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<T>(), len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_sum_wraps_instead_of_panicking() {
        let mut acc = [250u8, 1];
        reduce_into(ReduceOp::Sum, &mut acc, &[10, 2]);
        assert_eq!(acc, [4, 3]);
    }

    #[test]
    fn prefix_fold_keeps_the_prefix_first() {
        let mut out = [1.0f32, 5.0];
        reduce_prefix_into(ReduceOp::Max, &[3.0, 2.0], &mut out);
        assert_eq!(out, [3.0, 5.0]);
        let mut h = [f16::from_f32(1.5)];
        reduce_prefix_into(ReduceOp::Prod, &[f16::from_f32(2.0)], &mut h);
        assert_eq!(h[0].to_f32(), 3.0);
    }

    #[test]
    fn dtype_codes_round_trip() {
        for d in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::F64,
            DType::I32,
            DType::I64,
            DType::U8,
        ] {
            assert_eq!(DType::from_u8(d as u8), Some(d));
        }
        assert_eq!(DType::from_u8(0), None);
    }
}

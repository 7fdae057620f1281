//! GGML block layouts, byte for byte as GGUF files store them, so tensor
//! bytes from a mapped file can be viewed as blocks without copying.

use half::f16;

use crate::error::KernelError;

/// Elements per block of the simple formats (Q4_0, Q4_1, Q8_0, Q8_1).
pub const QK: usize = 32;
/// Elements per super-block of the K-quants (Q4_K, Q6_K, Q8_K).
pub const QK_K: usize = 256;

/// 32 weights as 4-bit values `q` in 0..16: `x = (q - 8) * d`.
/// Byte `j` holds element `j` in its low nibble and `j + 16` in its high one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK / 2],
}

/// 32 weights as 4-bit values with an offset: `x = q * d + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

/// 32 values as signed bytes: `x = q * d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

/// Q8_0 plus `s = d * sum(qs)`, which folds Q4_1's offset into one multiply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK],
}

/// 256 weights in 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit
/// min packed into `scales`: `x = d * sc * q - dmin * m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

/// 256 weights as 6-bit values (low 4 bits in `ql`, high 2 in `qh`) in 16
/// sub-blocks of 16 with signed 8-bit scales: `x = d * sc * (q - 32)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// Activations for the K-quants: 256 signed bytes with an f32 scale and the
/// sums of each group of 16, which the K-quants' mins need.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

impl Default for BlockQ4K {
    fn default() -> Self {
        Self {
            d: f16::ZERO,
            dmin: f16::ZERO,
            scales: [0; 12],
            qs: [0; QK_K / 2],
        }
    }
}

impl Default for BlockQ6K {
    fn default() -> Self {
        Self {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: [0; QK_K / 16],
            d: f16::ZERO,
        }
    }
}

impl Default for BlockQ8K {
    fn default() -> Self {
        Self {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }
    }
}

const _: () = {
    assert!(size_of::<BlockQ4_0>() == 18);
    assert!(size_of::<BlockQ4_1>() == 20);
    assert!(size_of::<BlockQ8_0>() == 34);
    assert!(size_of::<BlockQ8_1>() == 36);
    assert!(size_of::<BlockQ4K>() == 144);
    assert!(size_of::<BlockQ6K>() == 210);
    assert!(size_of::<BlockQ8K>() == 292);
};

/// A block type whose every bit pattern is a valid value, so raw file bytes
/// can be reinterpreted as a slice of it.
///
/// # Safety
/// Implementors must be `repr(C)`, contain only integers and `f16`/`f32`, and
/// have no padding.
pub unsafe trait Block: Copy + Default + 'static {
    /// Elements one block encodes.
    const ELEMENTS: usize;
    /// The GGML name, for error messages.
    const NAME: &'static str;
}

macro_rules! impl_block {
    ($t:ty, $n:expr, $name:literal) => {
        // SAFETY: repr(C), integer and float fields only, sizes asserted above.
        unsafe impl Block for $t {
            const ELEMENTS: usize = $n;
            const NAME: &'static str = $name;
        }
    };
}

impl_block!(BlockQ4_0, QK, "Q4_0");
impl_block!(BlockQ4_1, QK, "Q4_1");
impl_block!(BlockQ8_0, QK, "Q8_0");
impl_block!(BlockQ8_1, QK, "Q8_1");
impl_block!(BlockQ4K, QK_K, "Q4_K");
impl_block!(BlockQ6K, QK_K, "Q6_K");
impl_block!(BlockQ8K, QK_K, "Q8_K");

/// Views `bytes` as blocks of `B`: the length must be a whole number of
/// blocks and the start aligned for `B` (GGUF aligns tensor data to 32).
pub fn cast_blocks<B: Block>(bytes: &[u8]) -> Result<&[B], KernelError> {
    let size = size_of::<B>();
    if !bytes.len().is_multiple_of(size) {
        return Err(KernelError::RaggedBlocks {
            format: B::NAME,
            bytes: bytes.len(),
            block: size,
        });
    }
    if !(bytes.as_ptr() as usize).is_multiple_of(align_of::<B>()) {
        return Err(KernelError::Misaligned {
            format: B::NAME,
            align: align_of::<B>(),
        });
    }
    // SAFETY: length and alignment checked; `Block` guarantees every bit
    // pattern is valid and there is no padding.
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) })
}

/// The bytes of a block slice, e.g. to write quantized weights to a file.
pub fn block_bytes<B: Block>(blocks: &[B]) -> &[u8] {
    // SAFETY: `Block` types have no padding, so every byte is initialised.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), size_of_val(blocks)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cast_blocks_round_trips_block_bytes() {
        let blocks = vec![
            BlockQ4_1 {
                d: f16::from_f32(0.5),
                m: f16::from_f32(-1.0),
                qs: [7; 16]
            };
            3
        ];
        let back: &[BlockQ4_1] = cast_blocks(block_bytes(&blocks)).expect("aligned whole blocks");
        assert_eq!(back, &blocks[..]);
    }

    #[test]
    fn cast_blocks_rejects_partial_block() {
        let bytes = vec![0u8; 35];
        assert!(matches!(
            cast_blocks::<BlockQ8_0>(&bytes),
            Err(KernelError::RaggedBlocks { .. })
        ));
    }

    #[test]
    fn cast_blocks_rejects_misaligned_start() {
        let bytes = vec![0u8; 2 * 292 + 4];
        let odd = &bytes[1..1 + 292];
        assert!(matches!(
            cast_blocks::<BlockQ8K>(odd),
            Err(KernelError::Misaligned { .. })
        ));
    }
}

//! Float tensors from raw little-endian bytes: decoded to f32 straight from
//! the memory map, one pass, no intermediate buffer. Byte-wise decoding
//! also means a tensor need not be aligned in the file.

use candle_core::{Device, Tensor};
use half::{bf16, f16};

use super::Slice;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FloatKind {
    F32,
    F16,
    BF16,
}

impl FloatKind {
    pub(crate) fn size(self) -> usize {
        match self {
            FloatKind::F32 => 4,
            FloatKind::F16 | FloatKind::BF16 => 2,
        }
    }

    fn extend(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            FloatKind::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            FloatKind::F16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            FloatKind::BF16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
        }
    }
}

/// Decodes `slice` of a row-major tensor of `shape` whose bytes are
/// `bytes` (exactly the full tensor). The caller has checked the slice.
pub(crate) fn read_float(
    kind: FloatKind,
    bytes: &[u8],
    shape: &[usize],
    slice: &Slice,
) -> candle_core::Result<Tensor> {
    let out_shape = slice.apply(shape);
    let mut out = Vec::with_capacity(out_shape.iter().product());
    let elem = kind.size();
    match slice {
        Slice::Full => kind.extend(bytes, &mut out),
        Slice::Rows(r) => {
            let row: usize = shape.iter().skip(1).product::<usize>() * elem;
            kind.extend(&bytes[r.start * row..r.end * row], &mut out);
        }
        Slice::Cols(c) => {
            let width = shape.last().copied().unwrap_or(0) * elem;
            if width > 0 {
                for row in bytes.chunks_exact(width) {
                    kind.extend(&row[c.start * elem..c.end * elem], &mut out);
                }
            }
        }
    }
    Tensor::from_vec(out, out_shape, &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_f32(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn rows_and_cols_slices_read_the_right_elements() {
        let data: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let bytes = bytes_f32(&data);
        let shape = [3, 4];
        let rows = read_float(FloatKind::F32, &bytes, &shape, &Slice::Rows(1..3)).unwrap();
        assert_eq!(
            rows.to_vec2::<f32>().unwrap(),
            vec![vec![4., 5., 6., 7.], vec![8., 9., 10., 11.]]
        );
        let cols = read_float(FloatKind::F32, &bytes, &shape, &Slice::Cols(1..3)).unwrap();
        assert_eq!(
            cols.to_vec2::<f32>().unwrap(),
            vec![vec![1., 2.], vec![5., 6.], vec![9., 10.]]
        );
    }

    #[test]
    fn half_types_decode_to_f32() {
        let h: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect();
        let t = read_float(FloatKind::F16, &h, &[2], &Slice::Full).unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), vec![1.5, -2.0]);
        let b: Vec<u8> = [0.25f32, 3.0]
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect();
        let t = read_float(FloatKind::BF16, &b, &[2], &Slice::Full).unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), vec![0.25, 3.0]);
    }
}

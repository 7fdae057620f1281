//! all_sum on a candle tensor's own storage: the partial outputs of a
//! sharded-to-all layer are summed where the matmul wrote them, with no
//! copy out of and back into the tensor.

use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor};
use std::cell::RefCell;

use huddle_comm::{CommError, Group};

use crate::comm_stats::{all_sum_bytes, timed};

struct AllSum<'a> {
    group: &'a Group,
}

impl InplaceOp1 for AllSum<'_> {
    fn name(&self) -> &'static str {
        "huddle-all-sum"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Err(candle_core::Error::Msg(
                "all_sum needs a contiguous tensor".into(),
            ));
        };
        let result = match storage {
            CpuStorage::F32(v) => {
                let bytes = all_sum_bytes(self.group, 4 * (end - start) as u64);
                timed(bytes, || self.group.all_sum(&mut v[start..end]))
            }
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "all_sum of {:?} tensors is not supported",
                    candle_core::backend::BackendStorage::dtype(other)
                )));
            }
        };
        result.map_err(|e| {
            let msg = e.to_string();
            LAST_ERROR.with(|last| *last.borrow_mut() = Some(e));
            candle_core::Error::Msg(msg)
        })
    }
}

thread_local! {
    /// candle's error type cannot carry a `CommError` back out of an op
    /// (it keeps only the message); the op leaves it here for
    /// [`take_comm_error`].
    static LAST_ERROR: RefCell<Option<CommError>> = const { RefCell::new(None) };
}

/// The communication error behind the last failed all_sum on this thread,
/// if any, so that a lost peer is reported as such, not as failed math.
pub fn take_comm_error() -> Option<CommError> {
    LAST_ERROR.with(|last| last.borrow_mut().take())
}

/// Sums `t` over `group`, in place. `t` must be freshly computed (its
/// storage shared with no other tensor) and contiguous; a view would change
/// the tensor it shares storage with, so it is copied first.
pub fn all_sum_in_place(t: Tensor, group: &Group) -> candle_core::Result<Tensor> {
    if group.size() <= 1 {
        return Ok(t);
    }
    let t = if t.is_contiguous() && t.layout().start_offset() == 0 {
        t
    } else {
        t.copy()?
    };
    t.inplace_op1(&AllSum { group })?;
    Ok(t)
}

/// Sums `values` over `group`, in place (a workspace buffer's partial
/// outputs of a sharded-to-all layer).
pub fn all_sum_slice(values: &mut [f32], group: &Group) -> Result<(), crate::error::LmError> {
    if group.size() <= 1 {
        return Ok(());
    }
    let bytes = all_sum_bytes(group, 4 * values.len() as u64);
    timed(bytes, || group.all_sum(values)).map_err(crate::error::LmError::comm)
}

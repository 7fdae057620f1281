use thiserror::Error;

/// What went wrong when handing tensors to a kernel.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("{format} data of {bytes} bytes is not a whole number of {block}-byte blocks")]
    RaggedBlocks {
        format: &'static str,
        bytes: usize,
        block: usize,
    },

    #[error("{format} data does not start on a {align}-byte boundary")]
    Misaligned { format: &'static str, align: usize },

    #[error("{format} needs rows whose length is a multiple of {block}, got {cols}")]
    RowLength {
        format: &'static str,
        cols: usize,
        block: usize,
    },

    #[error("{what}: expected {expected} elements, got {actual}")]
    Size {
        what: &'static str,
        expected: usize,
        actual: usize,
    },

    #[error(
        "weights of type {weights} cannot be multiplied by activations quantized as {activations} (expected {expected})"
    )]
    ActivationType {
        weights: &'static str,
        activations: &'static str,
        expected: &'static str,
    },

    #[error("weights have {weights} columns but activations have {activations}")]
    InnerDim { weights: usize, activations: usize },
}

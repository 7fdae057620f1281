//! The engine loop of a split model (DESIGN.md "One engine loop"): rank 0
//! drives. Before every step it broadcasts a step message
//! (the token ids to run and which logits to compute, a KV truncation, or
//! stop); every rank then runs the same step. Rank 0 alone holds the
//! gathered logits and samples, and the sampled token reaches the others
//! as part of the next step message, so ranks can never disagree about
//! what they compute.
//!
//! [`crate::Model`] announces steps itself on rank 0 (generation and chat
//! code run unchanged); the other ranks sit in [`crate::Model::follow`].
//! These functions move a step over one group; [`crate::pp::Crew`] relays
//! it over the pipeline and tensor groups together.

use huddle_comm::Group;

use crate::error::LmError;
use crate::model::Logits;

const FORWARD: i64 = 1;
const TRUNCATE: i64 = 2;
const STOP: i64 = 3;

/// One step every rank runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Forward {
        tokens: Vec<u32>,
        logits: Logits,
    },
    /// Keep the first `len` cached positions.
    Truncate {
        len: usize,
    },
    /// Rank 0 is done: followers return.
    Stop,
}

/// Rank 0's side: sends `step` to every rank of `group`.
pub fn announce(group: &Group, step: &Step) -> Result<(), LmError> {
    let mut header = match step {
        Step::Forward { tokens, logits } => [
            FORWARD,
            tokens.len() as i64,
            i64::from(*logits == Logits::All),
        ],
        Step::Truncate { len } => [TRUNCATE, *len as i64, 0],
        Step::Stop => [STOP, 0, 0],
    };
    group.broadcast(&mut header, 0).map_err(LmError::comm)?;
    if let Step::Forward { tokens, .. } = step {
        let mut ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        group.broadcast(&mut ids, 0).map_err(LmError::comm)?;
    }
    Ok(())
}

/// A follower's side: waits (without limit, while rank 0 lives) for the
/// next step.
pub fn receive(group: &Group) -> Result<Step, LmError> {
    let mut header = [0i64; 3];
    group.broadcast(&mut header, 0).map_err(LmError::comm)?;
    let bad = |what: String| LmError::BadStep {
        rank: group.rank(),
        what,
    };
    let count = usize::try_from(header[1]).map_err(|_| bad(format!("count {}", header[1])))?;
    match header[0] {
        FORWARD => {
            let mut ids = vec![0i64; count];
            group.broadcast(&mut ids, 0).map_err(LmError::comm)?;
            let tokens = ids
                .into_iter()
                .map(|id| u32::try_from(id).map_err(|_| bad(format!("token id {id}"))))
                .collect::<Result<_, _>>()?;
            let logits = if header[2] == 1 {
                Logits::All
            } else {
                Logits::Last
            };
            Ok(Step::Forward { tokens, logits })
        }
        TRUNCATE => Ok(Step::Truncate { len: count }),
        STOP => Ok(Step::Stop),
        other => Err(bad(format!("step kind {other}"))),
    }
}

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

use crate::comm_stats::{broadcast_bytes, timed};
use crate::error::LmError;
use crate::model::Logits;

const FORWARD: i64 = 1;
const TRUNCATE: i64 = 2;
const STOP: i64 = 3;

/// A decode step's one token rides in the header, so that each generated
/// token costs the followers one broadcast, not two (on a slow link every
/// round trip shows in tokens/s).
const INLINE: usize = 1;
const HEADER: usize = 3 + INLINE;

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

fn broadcast(group: &Group, buf: &mut [i64]) -> Result<(), LmError> {
    let bytes = broadcast_bytes(group, 8 * buf.len() as u64, 0);
    timed(bytes, || group.broadcast(buf, 0)).map_err(LmError::comm)
}

/// Rank 0's side: sends `step` to every rank of `group`.
pub fn announce(group: &Group, step: &Step) -> Result<(), LmError> {
    let mut header = [0i64; HEADER];
    match step {
        Step::Forward { tokens, logits } => {
            header[..3].copy_from_slice(&[
                FORWARD,
                tokens.len() as i64,
                match logits {
                    Logits::Last => 0,
                    Logits::All => 1,
                    Logits::Argmax => 2,
                },
            ]);
            if tokens.len() <= INLINE {
                for (slot, &t) in header[3..].iter_mut().zip(tokens) {
                    *slot = i64::from(t);
                }
            }
        }
        Step::Truncate { len } => header[..2].copy_from_slice(&[TRUNCATE, *len as i64]),
        Step::Stop => header[0] = STOP,
    }
    broadcast(group, &mut header)?;
    if let Step::Forward { tokens, .. } = step
        && tokens.len() > INLINE
    {
        let mut ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        broadcast(group, &mut ids)?;
    }
    Ok(())
}

/// A follower's side: waits (without limit, while rank 0 lives) for the
/// next step. The wait for the header is idle time, not communication
/// cost, so only its bytes are counted.
pub fn receive(group: &Group) -> Result<Step, LmError> {
    let mut header = [0i64; HEADER];
    group.broadcast(&mut header, 0).map_err(LmError::comm)?;
    timed(broadcast_bytes(group, 8 * HEADER as u64, 0), || ());
    let bad = |what: String| LmError::BadStep {
        rank: group.rank(),
        what,
    };
    let count = usize::try_from(header[1]).map_err(|_| bad(format!("count {}", header[1])))?;
    match header[0] {
        FORWARD => {
            let ids = if count <= INLINE {
                header[3..3 + count].to_vec()
            } else {
                let mut ids = vec![0i64; count];
                broadcast(group, &mut ids)?;
                ids
            };
            let tokens = ids
                .into_iter()
                .map(|id| u32::try_from(id).map_err(|_| bad(format!("token id {id}"))))
                .collect::<Result<_, _>>()?;
            let logits = match header[2] {
                0 => Logits::Last,
                1 => Logits::All,
                2 => Logits::Argmax,
                other => return Err(bad(format!("logits kind {other}"))),
            };
            Ok(Step::Forward { tokens, logits })
        }
        TRUNCATE => Ok(Step::Truncate { len: count }),
        STOP => Ok(Step::Stop),
        other => Err(bad(format!("step kind {other}"))),
    }
}

//! The receive side's matching: where each incoming frame goes (a posted
//! receive, the early-message store, or nowhere), and the checks that
//! both ranks are in the same call.

use crate::engine::Posted;
use crate::engine::{Shared, State, decode_abort, mismatch};
use crate::error::CommError;
use crate::transport::{Dest, FrameSink};
use crate::wire::{FrameKind, Header};

/// Matches incoming frames against posted receives.
pub(crate) struct Sink<'a> {
    shared: &'a Shared,
    /// A Bye frame went by.
    pub bye: bool,
    /// Completed receives, published together by the reader (once per poll
    /// round on the I/O thread), so a caller waiting on several peers wakes
    /// once per round, not per frame.
    done: &'a mut Vec<u64>,
}

impl<'a> Sink<'a> {
    pub fn new(shared: &'a Shared, done: &'a mut Vec<u64>) -> Sink<'a> {
        Sink {
            shared,
            bye: false,
            done,
        }
    }
}

impl Sink<'_> {
    /// Whether the frame's call agrees with ours at the same point of the
    /// group (remembered for later when we are not there yet); a
    /// disagreement poisons the engine.
    fn agrees(&self, st: &mut State, peer: usize, h: &Header) -> bool {
        let op_key = (peer, h.key.group, h.key.seq);
        match st.expect.get(&op_key) {
            Some(mine) if *mine != h.desc => {
                let err = mismatch(h.key.group, self.shared.me, mine, peer, &h.desc);
                self.shared.poison(st, err);
                false
            }
            Some(_) => true,
            None => {
                st.early.entry(op_key).or_insert(h.desc);
                true
            }
        }
    }

    fn wrong_length(&self, st: &mut State, peer: usize, h: &Header, expected: usize) {
        let mine = st
            .expect
            .get(&(peer, h.key.group, h.key.seq))
            .copied()
            .unwrap_or(h.desc);
        let err = CommError::Mismatch {
            group: h.key.group,
            local: self.shared.me,
            local_op: format!("{mine} (expecting {expected} bytes from rank {peer})"),
            remote: peer,
            remote_op: format!("{} (sending {} bytes)", h.desc, h.len),
        };
        self.shared.poison(st, err);
    }
}

impl FrameSink for Sink<'_> {
    fn on_header(&mut self, peer: usize, h: &Header, folds: bool) -> Dest {
        match h.kind {
            FrameKind::Heartbeat => return Dest::Discard,
            FrameKind::Bye => {
                self.bye = true;
                return Dest::Discard;
            }
            FrameKind::Abort => return Dest::Owned(vec![0; h.len as usize]),
            FrameKind::Data => {}
        }
        let mut st = self.shared.lock();
        if st.error.is_some() {
            return Dest::Discard;
        }
        if !self.agrees(&mut st, peer, h) {
            return Dest::Discard;
        }
        // A receive that folds, reached by a transport that cannot: the
        // payload is read whole and folded at the end (`on_payload`).
        if !folds
            && st
                .posted
                .get(&(peer, h.key))
                .is_some_and(|p| p.fold.is_some() && p.mem.len as u64 == h.len)
        {
            return Dest::Owned(vec![0; h.len as usize]);
        }
        match st.posted.remove(&(peer, h.key)) {
            Some(p) if p.mem.len as u64 == h.len => match p.fold {
                Some(fold) => Dest::Fold {
                    mem: p.mem,
                    ticket: p.ticket,
                    fold,
                },
                None => Dest::Posted {
                    mem: p.mem,
                    ticket: p.ticket,
                },
            },
            Some(p) => {
                self.wrong_length(&mut st, peer, h, p.mem.len);
                Dest::Discard
            }
            None => Dest::Owned(vec![0; h.len as usize]),
        }
    }

    fn on_frame(&mut self, peer: usize, h: &Header, payload: &[u8]) {
        if h.kind != FrameKind::Data {
            let dest = match self.on_header(peer, h, false) {
                Dest::Owned(_) => Dest::Owned(payload.to_vec()),
                other => other,
            };
            self.on_payload(peer, *h, dest);
            return;
        }
        let mut st = self.shared.lock();
        if st.error.is_some() {
            return;
        }
        if !self.agrees(&mut st, peer, h) {
            return;
        }
        match st.posted.remove(&(peer, h.key)) {
            Some(p) if p.mem.len == payload.len() => {
                // SAFETY: a posted receive's memory stays valid until its
                // ticket is published (at the end of this poll round).
                unsafe { land(&p, payload) };
                self.done.push(p.ticket);
            }
            Some(p) => self.wrong_length(&mut st, peer, h, p.mem.len),
            None => {
                st.unexpected
                    .insert((peer, h.key), (h.desc, payload.to_vec()));
            }
        }
    }

    fn on_payload(&mut self, peer: usize, h: Header, dest: Dest) {
        match (h.kind, dest) {
            (FrameKind::Abort, Dest::Owned(v)) => {
                let err = decode_abort(&v, peer);
                let mut st = self.shared.lock();
                self.shared.poison(&mut st, err);
            }
            (FrameKind::Data, Dest::Posted { ticket, .. } | Dest::Fold { ticket, .. }) => {
                self.done.push(ticket)
            }
            (FrameKind::Data, Dest::Owned(v)) => {
                let mut st = self.shared.lock();
                if st.error.is_some() {
                    return;
                }
                match st.posted.remove(&(peer, h.key)) {
                    Some(p) if p.mem.len == v.len() => {
                        // SAFETY: a posted receive's memory stays valid until
                        // its ticket is published.
                        unsafe { land(&p, &v) };
                        self.done.push(p.ticket);
                    }
                    Some(p) => {
                        let err = CommError::Mismatch {
                            group: h.key.group,
                            local: self.shared.me,
                            local_op: format!(
                                "a call expecting {} bytes from rank {peer}",
                                p.mem.len
                            ),
                            remote: peer,
                            remote_op: format!("{} (sending {} bytes)", h.desc, v.len()),
                        };
                        self.shared.poison(&mut st, err);
                    }
                    None => {
                        st.unexpected.insert((peer, h.key), (h.desc, v));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Puts a whole payload where a posted receive wants it: copied, or folded.
///
/// # Safety
/// `p.mem` is valid for `payload.len()` bytes (its length, checked by the
/// caller) and not otherwise in use.
pub(crate) unsafe fn land(p: &Posted, payload: &[u8]) {
    // SAFETY: forwarded; posted memory is aligned for its elements.
    unsafe {
        match &p.fold {
            Some(f) => f.apply(payload.as_ptr(), p.mem.ptr, payload.len()),
            None => std::ptr::copy_nonoverlapping(payload.as_ptr(), p.mem.ptr, payload.len()),
        }
    }
}

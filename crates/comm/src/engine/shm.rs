//! The calls' side of shared memory: sends to a peer on this host go
//! straight into its ring when they fit, and waits for such transfers move
//! the bytes on the caller's thread (`shm_wait`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Op, Ticket};
use crate::error::Result;
use crate::transport::shm::ShmLink;
use crate::transport::{OutFrame, Payload};

impl Op<'_> {
    /// A send to a peer on this host: written into the ring now when it
    /// fits, queued (copied when small) for whoever waits next otherwise.
    ///
    /// # Safety
    /// As for [`Op::send`].
    pub(super) unsafe fn send_shm(
        &mut self,
        link: &Arc<ShmLink>,
        peer: usize,
        header: [u8; crate::wire::HEADER_LEN],
        data: &[u8],
        inline: bool,
    ) -> Result<Ticket> {
        let shared = self.shared;
        if shared.failed.load(Ordering::Acquire) {
            return Err(shared.fail(shared.lock()));
        }
        match link.send_now(&header, data) {
            Ok(true) => return Ok(Ticket(0)),
            Ok(false) => {}
            Err(_) => return Err(crate::shm_wait::corrupt(shared, peer)),
        }
        let ticket = if inline {
            None
        } else {
            let mut st = shared.lock();
            let t = st.next_ticket;
            st.next_ticket += 1;
            Some(t)
        };
        let payload = Payload::of(data, inline);
        let first = link.enqueue(OutFrame {
            peer,
            header,
            payload,
            ticket,
            written: None,
        });
        if let Some(t) = ticket {
            self.outstanding.push(t);
            self.shm_tickets.push(t);
        }
        let mut done = Vec::new();
        if link.push(&mut done).is_err() {
            return Err(crate::shm_wait::corrupt(shared, peer));
        }
        shared.publish(&mut done, -1);
        // A frame nobody will wait for is the I/O thread's to move; one
        // with a ticket moves when this caller waits for it.
        if first && ticket.is_none() && link.queued() {
            shared.wake_io();
        }
        Ok(Ticket(ticket.unwrap_or(0)))
    }

    /// Lets the I/O thread read the rings this call held.
    pub(super) fn release_shm(&mut self) {
        if !std::mem::take(&mut self.shm_holding) {
            return;
        }
        for &p in &self.shm_srcs {
            if let Some(l) = self.shared.link(p) {
                l.release();
            }
        }
    }

    /// Waits for a transfer through shared memory, reading the incoming
    /// rings of this call's sources meanwhile (the I/O thread stops
    /// watching them until the call ends or sleeps elsewhere).
    pub(super) fn wait_shm(&mut self, t: Ticket) -> Result<()> {
        self.reader.release();
        if !std::mem::replace(&mut self.shm_holding, true) {
            for &p in &self.shm_srcs {
                if let Some(l) = self.shared.link(p) {
                    l.hold();
                }
            }
        }
        let r = crate::shm_wait::wait(self.shared, t.0);
        self.shm_tickets.retain(|x| *x != t.0);
        if let Some(i) = self.outstanding.iter().rposition(|x| *x == t.0) {
            self.outstanding.swap_remove(i);
        }
        r
    }
}

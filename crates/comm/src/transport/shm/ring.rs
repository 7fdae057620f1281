//! A single-producer, single-consumer byte ring in memory shared by two
//! processes. Head and tail only grow (positions mod capacity index the
//! data), each on its own cache line; the producer publishes with a
//! release store of `head`, the consumer frees space with one of `tail`.
//!
//! Waking: a side about to sleep counts itself in `data_waiters` (the
//! consumer) or `space_waiters` (the producer), then looks once more; the
//! other side, after publishing, looks at that count and writes the
//! matching eventfd only when someone sleeps. Both sides put a SeqCst
//! fence between their store and their load, so one of them always sees
//! the other.
//!
//! Copies into the ring of at least [`STREAM_PUT_MIN`] bytes use plain or
//! non-temporal stores, whichever the producer measures to be faster
//! (`stores`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use super::stores::{StoreChoice, Stores};

/// The control block at the start of each ring's area.
#[repr(C, align(64))]
pub(crate) struct Control {
    head: AtomicU64,
    _pad0: [u8; 56],
    tail: AtomicU64,
    _pad1: [u8; 56],
    data_waiters: AtomicU32,
    _pad2: [u8; 60],
    space_waiters: AtomicU32,
}

/// Bytes reserved for the control block before each ring's data.
pub(crate) const CONTROL_BYTES: usize = 4096;

/// Copies into the ring at least this long may stream past the caches
/// (see `stores`); smaller ones (headers, tiny messages) stay plain, so a
/// small message is read from the producer's cache.
pub(crate) const STREAM_PUT_MIN: usize = 4096;

const _: () = assert!(std::mem::size_of::<Control>() <= CONTROL_BYTES);

/// The peer left the ring in a state no correct producer or consumer can
/// produce.
#[derive(Debug)]
pub(crate) struct Corrupt;

/// One direction of a link: a view into the shared mapping plus the two
/// eventfds of the pair.
pub(crate) struct Ring {
    ctl: *const Control,
    data: *mut u8,
    cap: usize,
    /// Written by the producer when a consumer sleeps.
    data_fd: OwnedFd,
    /// Written by the consumer when a producer sleeps.
    space_fd: OwnedFd,
    /// How this side writes large copies, when it is the producer.
    stores: StoreChoice,
}

// SAFETY: the pointers refer to a mapping that outlives the ring (the
// link owns both), and all shared words are atomics; the byte area is
// only touched under the producer/consumer protocol.
unsafe impl Send for Ring {}
unsafe impl Sync for Ring {}

impl Ring {
    /// # Safety
    /// `area` must point to `CONTROL_BYTES + cap` bytes of a shared
    /// mapping that stays mapped as long as the ring, 64-byte aligned;
    /// `cap` a power of two.
    pub unsafe fn new(area: *mut u8, cap: usize, data_fd: OwnedFd, space_fd: OwnedFd) -> Ring {
        Ring {
            ctl: area.cast::<Control>(),
            // SAFETY: inside the area, per the contract.
            data: unsafe { area.add(CONTROL_BYTES) },
            cap,
            data_fd,
            space_fd,
            stores: StoreChoice::new(cap),
        }
    }

    fn ctl(&self) -> &Control {
        // SAFETY: valid for the ring's lifetime (see `new`).
        unsafe { &*self.ctl }
    }

    pub fn data_fd(&self) -> i32 {
        self.data_fd.as_raw_fd()
    }

    pub fn space_fd(&self) -> i32 {
        self.space_fd.as_raw_fd()
    }

    fn used(&self) -> Result<usize, Corrupt> {
        let c = self.ctl();
        let head = c.head.load(Ordering::Acquire);
        let tail = c.tail.load(Ordering::Acquire);
        let used = head.wrapping_sub(tail);
        if used > self.cap as u64 {
            return Err(Corrupt);
        }
        Ok(used as usize)
    }

    /// Bytes the consumer may read now.
    pub fn readable(&self) -> Result<usize, Corrupt> {
        self.used()
    }

    /// Bytes the producer may write now.
    pub fn writable(&self) -> Result<usize, Corrupt> {
        Ok(self.cap - self.used()?)
    }

    /// Producer: copies `src` at the head (the caller checked the room)
    /// without publishing it; from [`STREAM_PUT_MIN`] bytes on, with the
    /// stores `stores` finds faster.
    pub fn put(&self, offset: usize, src: &[u8]) {
        let head = self.ctl().head.load(Ordering::Relaxed) as usize + offset;
        let at = head & (self.cap - 1);
        let first = src.len().min(self.cap - at);
        // SAFETY: both pieces lie inside the data area, which nothing else
        // references as a Rust slice; the consumer does not read beyond
        // the published head.
        let (d0, d1) = unsafe {
            (
                std::slice::from_raw_parts_mut(self.data.add(at), first),
                std::slice::from_raw_parts_mut(self.data, src.len() - first),
            )
        };
        let (s0, s1) = src.split_at(first);
        if src.len() < STREAM_PUT_MIN {
            d0.copy_from_slice(s0);
            d1.copy_from_slice(s1);
            return;
        }
        self.stores.run(src.len(), |way| match way {
            Stores::Plain => {
                d0.copy_from_slice(s0);
                d1.copy_from_slice(s1);
            }
            Stores::Streaming => {
                copy_streaming(s0, d0);
                copy_streaming(s1, d1);
            }
        });
    }

    /// Sets how large copies are written (tests of both ways).
    #[cfg(test)]
    pub fn force_stores(&self, way: Stores) {
        self.stores.force(way);
    }

    /// Producer: makes `n` more bytes visible, waking a sleeping consumer.
    pub fn publish(&self, n: usize) {
        let c = self.ctl();
        let head = c.head.load(Ordering::Relaxed);
        c.head.store(head.wrapping_add(n as u64), Ordering::Release);
        fence(Ordering::SeqCst);
        if c.data_waiters.load(Ordering::Relaxed) > 0 {
            signal(self.data_fd.as_raw_fd());
        }
    }

    /// Consumer: copies `dst.len()` bytes from `offset` past the tail
    /// (the caller checked they are readable) without freeing them.
    pub fn get(&self, offset: usize, dst: &mut [u8]) {
        let tail = self.ctl().tail.load(Ordering::Relaxed) as usize + offset;
        let at = tail & (self.cap - 1);
        let first = dst.len().min(self.cap - at);
        // SAFETY: inside the data area; the producer does not write over
        // bytes before the tail is advanced past them.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(at), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(
                self.data,
                dst.as_mut_ptr().add(first),
                dst.len() - first,
            );
        }
    }

    /// As [`Ring::get`], with non-temporal stores into `dst`: for results
    /// larger than the caches, so the copy does not first read every
    /// destination line it is about to overwrite.
    pub fn get_streaming(&self, dst: &mut [u8]) {
        let (a, b) = self.slices(0, dst.len());
        let (d0, d1) = dst.split_at_mut(a.len());
        copy_streaming(a, d0);
        copy_streaming(b, d1);
    }

    /// Consumer: the readable bytes from the tail as one slice when they
    /// do not wrap (up to `n`).
    pub fn contiguous(&self, offset: usize, n: usize) -> Option<&[u8]> {
        let tail = self.ctl().tail.load(Ordering::Relaxed) as usize + offset;
        let at = tail & (self.cap - 1);
        // SAFETY: inside the data area, readable per the caller's check.
        (at + n <= self.cap).then(|| unsafe { std::slice::from_raw_parts(self.data.add(at), n) })
    }

    /// Consumer: `n` readable bytes from `offset` past the tail, as the
    /// part before the ring's end and the part after it.
    pub fn slices(&self, offset: usize, n: usize) -> (&[u8], &[u8]) {
        let tail = self.ctl().tail.load(Ordering::Relaxed) as usize + offset;
        let at = tail & (self.cap - 1);
        let first = n.min(self.cap - at);
        // SAFETY: inside the data area, readable per the caller's check.
        unsafe {
            (
                std::slice::from_raw_parts(self.data.add(at), first),
                std::slice::from_raw_parts(self.data, n - first),
            )
        }
    }

    /// Consumer: frees `n` bytes, waking a sleeping producer.
    pub fn consume(&self, n: usize) {
        let c = self.ctl();
        let tail = c.tail.load(Ordering::Relaxed);
        c.tail.store(tail.wrapping_add(n as u64), Ordering::Release);
        fence(Ordering::SeqCst);
        if c.space_waiters.load(Ordering::Relaxed) > 0 {
            signal(self.space_fd.as_raw_fd());
        }
    }

    /// Counts one more (or one fewer) sleeping consumer.
    pub fn wait_data(&self, on: bool) {
        adjust(&self.ctl().data_waiters, on);
    }

    /// Counts one more (or one fewer) sleeping producer.
    pub fn wait_space(&self, on: bool) {
        adjust(&self.ctl().space_waiters, on);
    }
}

fn adjust(w: &AtomicU32, on: bool) {
    if on {
        w.fetch_add(1, Ordering::SeqCst);
    } else {
        w.fetch_sub(1, Ordering::SeqCst);
    }
    fence(Ordering::SeqCst);
}

fn copy_streaming(src: &[u8], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        let n = src.len().min(dst.len());
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        // Whole cache lines stream; the partial ones at either end are
        // plain copies.
        let head = d.align_offset(64).min(n);
        // SAFETY: every access lies inside `src` and `dst` (n bytes each);
        // streaming stores go to 16-byte aligned addresses; SSE2 is part
        // of the x86_64 baseline. The fence orders the streaming stores
        // before whatever publishes the data.
        unsafe {
            std::ptr::copy_nonoverlapping(s, d, head);
            let mut i = head;
            while i + 64 <= n {
                for k in (0..64).step_by(16) {
                    let v = _mm_loadu_si128(s.add(i + k).cast::<__m128i>());
                    _mm_stream_si128(d.add(i + k).cast::<__m128i>(), v);
                }
                i += 64;
            }
            std::ptr::copy_nonoverlapping(s.add(i), d.add(i), n - i);
            _mm_sfence();
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// Adds one to an eventfd's counter (a full counter still wakes).
pub(crate) fn signal(fd: i32) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes to an eventfd this process holds open.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Resets an eventfd (non-blocking) after a wake-up.
pub(crate) fn clear(fd: i32) {
    let mut v = 0u64;
    // SAFETY: reading the 8-byte counter of an eventfd this process holds.
    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

#[cfg(test)]
mod tests {
    use super::{STREAM_PUT_MIN, Stores, copy_streaming};
    use crate::transport::shm::segment;

    #[test]
    fn large_puts_cross_the_end_of_the_ring_exactly_either_way() {
        let cap = 16 * 1024;
        let ((_ma, tx, _), (_mb, _, rx)) = segment::test_pair(cap).unwrap();
        let cases = [(9000, 10_000), (1, STREAM_PUT_MIN), (77, cap), (5, 100)];
        for (way, (skip, len)) in [Stores::Plain, Stores::Streaming]
            .into_iter()
            .flat_map(|w| cases.map(|c| (w, c)))
        {
            tx.force_stores(way);
            // Move the head (and tail) to `skip` bytes further on.
            tx.put(0, &vec![0u8; skip]);
            tx.publish(skip);
            assert_eq!(rx.readable().unwrap(), skip);
            rx.consume(skip);
            let src: Vec<u8> = (0..len).map(|i| (i * 31 + skip) as u8).collect();
            tx.put(0, &src);
            tx.publish(len);
            assert_eq!(rx.readable().unwrap(), len);
            let mut dst = vec![0u8; len];
            rx.get(0, &mut dst);
            assert_eq!(dst, src);
            rx.consume(len);
        }
    }

    #[test]
    fn streaming_copies_are_exact_at_every_alignment_and_length() {
        let src: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..17 {
            for len in [0, 1, 15, 16, 63, 64, 65, 200, 977] {
                let mut dst = vec![0xaau8; 1100];
                copy_streaming(
                    &src[start..start + len],
                    &mut dst[start + 1..start + 1 + len],
                );
                assert_eq!(&dst[start + 1..start + 1 + len], &src[start..start + len]);
                assert!(dst[..start + 1].iter().all(|&b| b == 0xaa));
                assert!(dst[start + 1 + len..].iter().all(|&b| b == 0xaa));
            }
        }
    }
}

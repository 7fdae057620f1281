//! The memory two ranks share: an anonymous memfd (never a name in
//! /dev/shm, so nothing can outlive the processes, kill -9 included)
//! holding one ring per direction, plus the four eventfds of the pair.
//! The lower rank creates it and passes the descriptors to the higher one
//! (see `setup`); each side closes the memfd once it is mapped.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::ring::{CONTROL_BYTES, Ring};

/// Data bytes of each ring: one pipeline piece. 4 MiB moved a 64 MiB
/// all_sum no faster (5.8-6.9 against 5.9-6.0 GB/s, 2 ranks), and every
/// byte of a ring ends up resident (the write position goes round), so a
/// rank with three same-host peers held 24.6 MB of rings instead of 6.
pub(crate) const RING_BYTES: usize = 1 << 20;

/// Descriptors a segment travels as: memfd, then data and space eventfds
/// of ring 0 (lower to higher rank) and of ring 1.
pub(crate) const FDS: usize = 5;

fn segment_len(ring_bytes: usize) -> usize {
    2 * (CONTROL_BYTES + ring_bytes)
}

fn check(r: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(r)
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let fd = check(
        unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) },
        "eventfd",
    )?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates the descriptors of a new segment (memory reserved up front, so
/// a full tmpfs fails here rather than with SIGBUS later).
pub(crate) fn create() -> io::Result<Vec<OwnedFd>> {
    create_with(RING_BYTES)
}

fn create_with(ring_bytes: usize) -> io::Result<Vec<OwnedFd>> {
    // SAFETY: a valid C string; the result is checked.
    let fd = check(
        unsafe { libc::memfd_create(c"huddle-shm".as_ptr(), libc::MFD_CLOEXEC) },
        "memfd_create",
    )?;
    // SAFETY: a fresh descriptor nobody else owns.
    let mem = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = segment_len(ring_bytes) as libc::off_t;
    // SAFETY: plain syscalls on our descriptor.
    check(
        unsafe { libc::ftruncate(mem.as_raw_fd(), len) },
        "ftruncate",
    )?;
    // SAFETY: as above.
    let r = unsafe { libc::fallocate(mem.as_raw_fd(), 0, 0, len) };
    if r != 0 {
        let e = io::Error::last_os_error();
        // Filesystems without fallocate still work; only "full" is fatal.
        if e.raw_os_error() == Some(libc::ENOSPC) {
            return Err(io::Error::new(
                e.kind(),
                format!("reserving shared memory: {e}"),
            ));
        }
    }
    let mut fds = vec![mem];
    for _ in 0..4 {
        fds.push(eventfd()?);
    }
    Ok(fds)
}

/// One side of a mapped segment: the mapping, the ring this rank writes,
/// the ring it reads.
pub(crate) type Side = (Mapping, Ring, Ring);

/// A mapped segment; unmapped on drop.
pub(crate) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a plain shared mapping; access goes through `Ring`.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer referenced (the rings that
        // point into it are dropped with the link that owns both).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Maps the descriptors of `create` (the memfd is closed after) and
/// returns the mapping with (ring this rank writes, ring it reads).
pub(crate) fn map(fds: Vec<OwnedFd>, lower: bool) -> io::Result<Side> {
    map_with(fds, lower, RING_BYTES)
}

fn map_with(mut fds: Vec<OwnedFd>, lower: bool, ring_bytes: usize) -> io::Result<Side> {
    if fds.len() != FDS {
        return Err(io::Error::other(format!(
            "expected {FDS} descriptors, got {}",
            fds.len()
        )));
    }
    let len = segment_len(ring_bytes);
    let mem = fds.remove(0);
    // SAFETY: an all-zero stat is valid to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and out pointer.
    check(unsafe { libc::fstat(mem.as_raw_fd(), &mut st) }, "fstat")?;
    if (st.st_size as u64) < len as u64 {
        return Err(io::Error::other(format!(
            "the shared segment holds {} bytes, not {len}",
            st.st_size
        )));
    }
    // SAFETY: mapping our descriptor; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::new(
            io::Error::last_os_error().kind(),
            format!("mmap: {}", io::Error::last_os_error()),
        ));
    }
    drop(mem);
    let mapping = Mapping { ptr: p.cast(), len };
    let mut it = fds.into_iter();
    let (Some(d0), Some(s0), Some(d1), Some(s1)) = (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(io::Error::other("missing eventfds"));
    };
    let area = CONTROL_BYTES + ring_bytes;
    // SAFETY: two disjoint page-aligned areas of the mapping, which the
    // link keeps alive as long as the rings.
    let (r0, r1) = unsafe {
        (
            Ring::new(mapping.ptr, ring_bytes, d0, s0),
            Ring::new(mapping.ptr.add(area), ring_bytes, d1, s1),
        )
    };
    Ok(if lower {
        (mapping, r0, r1)
    } else {
        (mapping, r1, r0)
    })
}

/// Both ends of one segment with tiny rings, for tests of wrapping.
#[cfg(test)]
pub(crate) fn test_pair(ring_bytes: usize) -> io::Result<(Side, Side)> {
    let fds = create_with(ring_bytes)?;
    let copies = fds
        .iter()
        .map(|f| f.try_clone())
        .collect::<io::Result<Vec<OwnedFd>>>()?;
    Ok((
        map_with(fds, true, ring_bytes)?,
        map_with(copies, false, ring_bytes)?,
    ))
}

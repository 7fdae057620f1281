//! How the producer writes large copies into a ring: plain stores or
//! non-temporal (streaming) ones, chosen by measuring both.
//!
//! Which is faster depends on where the two cores sit, and on a virtual
//! machine that changes while the job runs. When the cores share a cache,
//! plain stores win: the consumer reads the ring from that cache. When
//! they do not, each plain store first fetches its line back from the
//! consumer's cache, and streaming the data out to memory is faster. On
//! the 2-core dev VM a 64 MiB all_sum ran 1.3x faster with plain stores
//! at some times and 1.5x faster streaming at others, flipping between
//! runs and within one.
//!
//! So the producer keeps one way and, every `PROBE_EVERY` bytes, times
//! its copies each way: in the order chosen, other, other, chosen (so a
//! trend during the probe, or the phase of the call, weighs on both
//! alike), each stretch a ring's worth of copies, after a ring's worth
//! written that way first (so the lines are where that way leaves them).
//! Only the copies are timed, never the waits between them (which a
//! barrier or the caller's own work between calls would make noise of);
//! the median copy per way decides, and the other way must be clearly
//! faster. The copy time follows the whole transfer's: where plain
//! stores won, plain copies took ~80 ns/KiB against ~100 streaming;
//! where streaming won, plain ones took 1.5-1.6x as long (163 against
//! 100 ns/KiB, say).

use std::sync::Mutex;
use std::time::Instant;

/// Bytes copied the chosen way between two probes.
const PROBE_EVERY: usize = 256 << 20;

/// Bytes copied before the first probe: past the ring's first laps, whose
/// page faults would blur it, yet early in a job.
const FIRST_PROBE: usize = 32 << 20;

/// Copies at least this long are timed in a probe.
const TIMED_MIN: usize = 64 * 1024;

/// The other way must be this much faster (its median copy time this
/// fraction of the chosen way's, or less) to be taken: no flapping on
/// noise.
const SWITCH_BELOW: f32 = 0.85;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Stores {
    Plain,
    Streaming,
}

impl Stores {
    fn other(self) -> Stores {
        match self {
            Stores::Plain => Stores::Streaming,
            Stores::Streaming => Stores::Plain,
        }
    }
}

/// One stretch of a probe.
struct Leg {
    chosen: bool,
    /// Bytes still to write before timing starts.
    settle: usize,
    /// Bytes still to time.
    timed: usize,
}

struct State {
    chosen: Stores,
    since_probe: usize,
    /// The probe's legs still to run, the current one first.
    legs: Vec<Leg>,
    /// Nanoseconds per KiB of the timed copies, the chosen way's and the
    /// other's.
    samples: [Vec<f32>; 2],
}

impl State {
    fn way(&self) -> Stores {
        match self.legs.first() {
            Some(leg) if !leg.chosen => self.chosen.other(),
            _ => self.chosen,
        }
    }

    /// Accounts a copy of `len` bytes; `ns_per_kib` when it was timed.
    fn copied(&mut self, len: usize, ns_per_kib: Option<f32>) {
        let Some(leg) = self.legs.first_mut() else {
            return;
        };
        if leg.settle > 0 {
            leg.settle = leg.settle.saturating_sub(len);
            return;
        }
        if let Some(t) = ns_per_kib {
            self.samples[usize::from(!leg.chosen)].push(t);
        }
        leg.timed = leg.timed.saturating_sub(len);
        if leg.timed > 0 {
            return;
        }
        self.legs.remove(0);
        if self.legs.is_empty() {
            self.decide();
        }
    }

    fn decide(&mut self) {
        let [mine, theirs] = self.samples.each_mut().map(|v| median(v));
        if let (Some(m), Some(t)) = (mine, theirs)
            && t < m * SWITCH_BELOW
        {
            tracing::debug!(
                "shared memory: {:?} stores from now on ({t:.0} against {m:.0} ns/KiB)",
                self.chosen.other()
            );
            self.chosen = self.chosen.other();
        }
        self.samples.iter_mut().for_each(Vec::clear);
        self.since_probe = 0;
    }
}

/// The median; `None` for too few samples to tell.
fn median(v: &mut [f32]) -> Option<f32> {
    if v.len() < 4 {
        return None;
    }
    v.sort_by(f32::total_cmp);
    Some(v[v.len() / 2])
}

/// The producer's choice for one ring; only the producer (who holds the
/// link's send lock) uses it, so the mutex is never contended.
pub(crate) struct StoreChoice {
    /// Bytes of the ring.
    ring: usize,
    state: Mutex<State>,
}

impl StoreChoice {
    /// Starts with plain stores; the first probe comes after
    /// `FIRST_PROBE` bytes.
    pub fn new(ring: usize) -> StoreChoice {
        StoreChoice {
            ring,
            state: Mutex::new(State {
                chosen: Stores::Plain,
                since_probe: PROBE_EVERY - FIRST_PROBE,
                legs: Vec::new(),
                samples: [Vec::new(), Vec::new()],
            }),
        }
    }

    /// Sets the way, with no probe for a while (tests of both ways).
    #[cfg(test)]
    pub fn force(&self, way: Stores) {
        let mut s = self.lock();
        s.chosen = way;
        s.since_probe = 0;
        s.legs.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies `len` bytes with `copy(way)`.
    pub fn run(&self, len: usize, copy: impl FnOnce(Stores)) {
        let (way, probing) = self.way(len);
        if !probing {
            copy(way);
            return;
        }
        let start = Instant::now();
        copy(way);
        let ns = start.elapsed().as_nanos() as f32;
        let timed = (len >= TIMED_MIN).then(|| ns * 1024.0 / len as f32);
        self.lock().copied(len, timed);
    }

    /// The way for a copy of `len` bytes, and whether a probe runs.
    fn way(&self, len: usize) -> (Stores, bool) {
        let mut s = self.lock();
        if s.legs.is_empty() {
            s.since_probe += len;
            if s.since_probe < PROBE_EVERY {
                return (s.chosen, false);
            }
            let ring = self.ring;
            let leg = |chosen, settle| Leg {
                chosen,
                settle: if settle { ring } else { 0 },
                timed: ring,
            };
            s.legs = vec![
                leg(true, false),
                leg(false, true),
                leg(false, false),
                leg(true, true),
            ];
        }
        (s.way(), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RING: usize = 4 << 20;
    const COPY: usize = 256 << 10;

    /// Runs copies of COPY bytes, each costing `plain` or `streaming`
    /// ns/KiB, until `until` holds; returns the ways taken.
    fn copies(
        c: &StoreChoice,
        plain: f32,
        streaming: f32,
        until: impl Fn(&State) -> bool,
    ) -> Vec<Stores> {
        let mut ways = Vec::new();
        while !until(&c.lock()) {
            let (way, probing) = c.way(COPY);
            let cost = if way == Stores::Plain {
                plain
            } else {
                streaming
            };
            if probing {
                c.lock().copied(COPY, Some(cost));
            }
            ways.push(way);
        }
        ways
    }

    fn probing(s: &State) -> bool {
        !s.legs.is_empty()
    }

    fn through_a_probe(c: &StoreChoice, plain: f32, streaming: f32) -> Vec<Stores> {
        let mut ways = copies(c, plain, streaming, probing);
        ways.extend(copies(c, plain, streaming, |s| !probing(s)));
        ways
    }

    #[test]
    fn a_probe_runs_chosen_other_other_chosen_and_keeps_the_faster() {
        let c = StoreChoice::new(RING);
        let ways = through_a_probe(&c, 100.0, 60.0);
        let ring = RING / COPY;
        let before = FIRST_PROBE / COPY - 1;
        let (p, s) = (Stores::Plain, Stores::Streaming);
        let want: Vec<Stores> = [(p, before), (p, ring), (s, 3 * ring), (p, 2 * ring)]
            .iter()
            .flat_map(|&(w, k)| std::iter::repeat_n(w, k))
            .collect();
        assert_eq!(ways, want);
        assert_eq!(c.lock().chosen, Stores::Streaming);
        // Conditions change: the next probe, after PROBE_EVERY bytes,
        // goes back to plain.
        let ways = through_a_probe(&c, 50.0, 60.0);
        assert_eq!(ways.len(), PROBE_EVERY / COPY - 1 + 6 * ring);
        assert_eq!(c.lock().chosen, Stores::Plain);
    }

    #[test]
    fn a_small_difference_or_a_few_slow_copies_change_nothing() {
        let c = StoreChoice::new(RING);
        through_a_probe(&c, 100.0, 95.0);
        assert_eq!(c.lock().chosen, Stores::Plain);
        // Plain is faster, but for a few copies cut short by preemption.
        copies(&c, 50.0, 60.0, probing);
        let mut slow = 3;
        while probing(&c.lock()) {
            let (way, _) = c.way(COPY);
            let cost = match way {
                Stores::Plain if slow > 0 => {
                    slow -= 1;
                    1e6
                }
                Stores::Plain => 50.0,
                Stores::Streaming => 60.0,
            };
            c.lock().copied(COPY, Some(cost));
        }
        assert_eq!(c.lock().chosen, Stores::Plain);
    }
}

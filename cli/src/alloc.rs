//! What the binary asks of its allocator (mimalloc, the `#[global_allocator]` in `main.rs`)
//! beyond allocating: returning freed memory to the OS at points of its choosing.
//!
//! mimalloc keeps freed pages committed for a while (`purge_delay`, 1 s by default) so that
//! the next allocations reuse them without page faults. During a catch-up that holds the
//! frames, decoded ops and records of the batch in hand, then frees them, on threads that
//! come and go with each ingest, that retention was ~50–80 MB of a 1M-op catch-up's peak
//! (`docs/benchmarks.md`, "Catch-up memory at 1M ops"). Purging on every free
//! (`MIMALLOC_PURGE_DELAY=0`) removes it but costs the merge path page faults on every
//! batch; a forced collection every [`CATCH_UP_RELEASE_OPS`] received ops removes most of
//! it for a small share of that cost. The library crates stay allocator-agnostic: only
//! this binary knows its allocator.

/// Ops received between two [`release_free_memory`] calls during a catch-up (about four
/// 1 MiB `Ops` frames).
pub const CATCH_UP_RELEASE_OPS: u64 = 16_384;

/// Returns memory mimalloc holds freed but committed to the OS now, without waiting for
/// its purge delay: pages of the calling thread's heap that are empty, and every arena
/// range freed by any thread. Costs the page faults of touching that memory again; call
/// it between batches of work, not per allocation.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointer and only walks mimalloc's own structures; it
    // may be called from any thread at any time (mimalloc's API contract).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Calls an action each time a growing count (ops held during a catch-up) passes another
/// multiple of a step since the last call: the throttle between a progress callback, which
/// runs per received frame, and [`release_free_memory`].
pub struct EveryOps {
    step: u64,
    next: Option<u64>,
}

impl EveryOps {
    /// Fires every `step` ops (at least 1), counted from the first count seen.
    pub fn new(step: u64) -> EveryOps {
        EveryOps {
            step: step.max(1),
            next: None,
        }
    }

    /// Records that `held` ops are held now; true when the action is due (and re-arms for
    /// `step` ops later).
    pub fn due(&mut self, held: u64) -> bool {
        match self.next {
            None => {
                self.next = Some(held.saturating_add(self.step));
                false
            }
            Some(next) if held >= next => {
                self.next = Some(held.saturating_add(self.step));
                true
            }
            Some(_) => false,
        }
    }

    /// [`EveryOps::due`], running `release_free_memory` when it is.
    pub fn release_if_due(&mut self, held: u64) {
        if self.due(held) {
            release_free_memory();
        }
    }
}

/// A daemon's [`huskies_daemon::IngestHook`]: counts the ops admitted from peers and
/// releases freed memory every [`CATCH_UP_RELEASE_OPS`] of them, so a `huskies daemon`
/// catching up from a peer returns memory as `huskies init --join` does. Live traffic
/// (a few ops a second) reaches the step rarely.
pub fn daemon_hook() -> huskies_daemon::IngestHook {
    let state = std::sync::Mutex::new((0u64, EveryOps::new(CATCH_UP_RELEASE_OPS)));
    huskies_daemon::IngestHook(std::sync::Arc::new(move |applied| {
        let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.0 += applied as u64;
        let held = s.0;
        s.1.release_if_due(held);
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_per_step_from_the_first_count() {
        let mut every = EveryOps::new(100);
        let fired: Vec<u64> = [5, 50, 104, 105, 150, 204, 205, 500, 501, 601]
            .into_iter()
            .filter(|&h| every.due(h))
            .collect();
        // Armed at 5 (next 105); 105 fires (next 205); 205 fires (next 305); a jump to 500
        // fires once (next 600); 601 fires.
        assert_eq!(fired, vec![105, 205, 500, 601]);
    }

    #[test]
    fn a_zero_step_fires_on_every_new_count() {
        let mut every = EveryOps::new(0);
        assert!(!every.due(1));
        assert!(every.due(2));
        assert!(every.due(3));
        assert!(!every.due(3));
    }

    #[test]
    fn releasing_returns_and_memory_stays_usable() {
        // The collection must not disturb live allocations.
        let live: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 * 1024]).collect();
        drop((0..64).map(|_| vec![0u8; 256 * 1024]).collect::<Vec<_>>());
        release_free_memory();
        for (i, v) in live.iter().enumerate() {
            assert!(v.iter().all(|&b| b == i as u8));
        }
    }
}

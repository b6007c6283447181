//! The Lamport clock.

/// How far a remote op may move our clock forward at once. A legitimate cluster advances
/// its clock by about one per op; 2^32 is billions of ops of headroom, while a hostile
/// peer cannot push the clock near `u64::MAX` (which would freeze every node's writes).
pub const MAX_LAMPORT_JUMP: u64 = 1 << 32;

/// A Lamport clock: every local op takes `max(everything seen) + 1`. Persisted with each
/// batch, so a restart never reuses a timestamp. Arithmetic saturates, never panics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LamportClock(u64);

/// A remote timestamp that would move the clock further than [`MAX_LAMPORT_JUMP`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("lamport {remote} is more than {MAX_LAMPORT_JUMP} ahead of our clock {local}")]
pub struct ClockJump {
    /// The remote timestamp.
    pub remote: u64,
    /// Our clock.
    pub local: u64,
}

impl LamportClock {
    /// A clock at `value` (as loaded from the store).
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The highest timestamp seen or issued.
    pub const fn value(self) -> u64 {
        self.0
    }

    /// The timestamp for the next local op, or `None` once the clock is exhausted
    /// (`u64::MAX`: we refuse to write rather than reuse a timestamp).
    pub fn next(self) -> Option<u64> {
        self.0.checked_add(1)
    }

    /// Records a timestamp issued locally.
    pub fn issue(&mut self, t: u64) {
        self.0 = self.0.max(t);
    }

    /// Checks a remote timestamp against the jump bound without moving the clock.
    pub fn check(self, remote: u64) -> Result<(), ClockJump> {
        if remote > self.0.saturating_add(MAX_LAMPORT_JUMP) {
            return Err(ClockJump {
                remote,
                local: self.0,
            });
        }
        Ok(())
    }

    /// Observes a remote timestamp that passed [`LamportClock::check`].
    pub fn observe(&mut self, remote: u64) {
        self.0 = self.0.max(remote);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_max_seen_plus_one_and_saturates() {
        let mut c = LamportClock::new(5);
        c.observe(9);
        assert_eq!(c.next(), Some(10));
        c.observe(3);
        assert_eq!(c.value(), 9);
        assert_eq!(LamportClock::new(u64::MAX).next(), None);
        assert!(LamportClock::new(u64::MAX - 1).check(u64::MAX).is_ok());
    }

    #[test]
    fn jumps_beyond_the_bound_are_refused() {
        let c = LamportClock::new(100);
        assert!(c.check(100 + MAX_LAMPORT_JUMP).is_ok());
        let err = c.check(101 + MAX_LAMPORT_JUMP).unwrap_err();
        assert_eq!(err.local, 100);
    }
}

//! Two connections to the same peer: which one stays.
//!
//! Both nodes may dial each other at once, and a node may redial a peer whose old connection
//! it still holds (half-open, or slow to time out). Each side resolves the pair on its own,
//! from what both sides know, so that both close the same one:
//!
//! - opened by different sides (a cross-dial): the connection opened by the lower node id
//!   stays;
//! - opened by the same side (a reconnect): the old connection stays unless it has missed two
//!   keepalives (nothing received for `2 × keepalive_ms`), in which case it is presumed dead
//!   and the new one replaces it.

use crate::{NodeId, Timestamp};

/// Which side opened a connection, seen from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opener {
    /// This node dialled.
    Us,
    /// The peer dialled this node.
    Peer,
}

/// The connection already held to the peer, as the rule needs to see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldConnection {
    /// Who opened it.
    pub opener: Opener,
    /// When a frame was last received on it.
    pub last_recv: Timestamp,
}

/// Which of two connections to one peer stays open (the other is closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepConnection {
    /// The new connection stays; close the held one.
    New,
    /// The held connection stays; close the new one.
    Held,
}

/// Decides between a held connection to `peer` and a new one opened by `new`, at `now`.
/// `keepalive_ms` is the sessions' keepalive period
/// ([`SessionConfig::keepalive_ms`](crate::sync::SessionConfig)). Both nodes reach the same
/// decision about the same pair (see the module's rule).
pub fn keep_connection(
    me: NodeId,
    peer: NodeId,
    new: Opener,
    held: HeldConnection,
    now: Timestamp,
    keepalive_ms: i64,
) -> KeepConnection {
    let initiator = |opener: Opener| match opener {
        Opener::Us => me,
        Opener::Peer => peer,
    };
    let (new_by, held_by) = (initiator(new), initiator(held.opener));
    let keeper = me.min(peer);
    let held_is_dead = now.millis_since(held.last_recv) > keepalive_ms.saturating_mul(2);
    if (new_by == held_by && held_is_dead) || (new_by == keeper && held_by != keeper) {
        KeepConnection::New
    } else {
        KeepConnection::Held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeKey;

    const KEEPALIVE: i64 = 10_000;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(1_763_700_000_000 + ms)
    }

    /// Two distinct node ids, the lower first.
    fn ids() -> (NodeId, NodeId) {
        let a = NodeKey::generate(&mut rand_core::OsRng).node_id();
        let b = NodeKey::generate(&mut rand_core::OsRng).node_id();
        assert_ne!(a, b);
        (a.min(b), a.max(b))
    }

    fn held(opener: Opener, last_recv: Timestamp) -> HeldConnection {
        HeldConnection { opener, last_recv }
    }

    #[test]
    fn of_a_cross_dial_both_sides_keep_the_connection_the_lower_id_opened() {
        let (low, high) = ids();
        // (this node, its peer, who opened the new one, who opened the held one, verdict):
        // on both sides the verdict keeps the connection that `low` dialled.
        let cases = [
            (low, high, Opener::Us, Opener::Peer, KeepConnection::New),
            (low, high, Opener::Peer, Opener::Us, KeepConnection::Held),
            (high, low, Opener::Us, Opener::Peer, KeepConnection::Held),
            (high, low, Opener::Peer, Opener::Us, KeepConnection::New),
        ];
        // Whether or not the held one is silent: a cross-dial is not a reconnect.
        for last_recv in [t(0), t(-100_000)] {
            for (me, peer, new, old, verdict) in cases {
                let got = keep_connection(me, peer, new, held(old, last_recv), t(0), KEEPALIVE);
                assert_eq!(
                    got,
                    verdict,
                    "me is the {} id, new by {new:?}",
                    if me == low { "lower" } else { "higher" }
                );
            }
        }
    }

    #[test]
    fn a_reconnect_replaces_the_held_connection_only_after_two_missed_keepalives() {
        let (low, high) = ids();
        for (me, peer) in [(low, high), (high, low)] {
            for opener in [Opener::Us, Opener::Peer] {
                let at_limit = held(opener, t(-2 * KEEPALIVE));
                let past_limit = held(opener, t(-2 * KEEPALIVE - 1));
                assert_eq!(
                    keep_connection(me, peer, opener, at_limit, t(0), KEEPALIVE),
                    KeepConnection::Held,
                    "exactly two keepalives of silence is still alive"
                );
                assert_eq!(
                    keep_connection(me, peer, opener, past_limit, t(0), KEEPALIVE),
                    KeepConnection::New
                );
            }
        }
    }

    #[test]
    fn a_huge_keepalive_does_not_overflow() {
        let (low, high) = ids();
        let h = held(Opener::Us, Timestamp::from_millis(i64::MIN));
        assert_eq!(
            keep_connection(
                low,
                high,
                Opener::Us,
                h,
                Timestamp::from_millis(i64::MAX),
                i64::MAX
            ),
            KeepConnection::Held
        );
    }
}

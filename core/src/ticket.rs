//! One-time join tickets: what a new node needs to reach an admin and be admitted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::id::{ClusterId, NodeId};
use crate::time::Timestamp;

const PREFIX: &str = "huskies-ticket-v1:";

/// A join ticket, shown to users as `huskies-ticket-v1:<hex>`. The issuing admin keeps only
/// a hash of the secret, and forgets it once redeemed or expired.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The cluster to join.
    pub cluster: ClusterId,
    /// The admin node that issued it (the joiner trusts exactly this key).
    pub issuer: NodeId,
    /// Where the issuer's daemon listens, e.g. `ws://10.0.0.5:3001/crdt-sync`.
    pub address: String,
    /// The one-time secret.
    pub secret: [u8; 32],
    /// When it stops working.
    pub expires_at: Timestamp,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("cluster", &self.cluster)
            .field("issuer", &self.issuer)
            .field("address", &self.address)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = postcard::to_allocvec(self).expect("tickets encode");
        write!(f, "{PREFIX}{}", hex::encode(bytes))
    }
}

impl FromStr for Ticket {
    type Err = Error;

    fn from_str(s: &str) -> Result<Ticket, Error> {
        let bad =
            || Error::InvalidArgument("not a huskies join ticket (expected huskies-ticket-v1:...)".into());
        let hex_part = s.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
        let bytes = hex::decode(hex_part).map_err(|_| bad())?;
        postcard::from_bytes(&bytes).map_err(|_| bad())
    }
}

/// What the issuer stores per ticket (keyed by a hash of the secret, `keyspace::ticket`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TicketRecord {
    pub expires_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_as_text() {
        let t = Ticket {
            cluster: ClusterId::from_bytes([1; 32]),
            issuer: NodeId::from_bytes([2; 32]),
            address: "ws://127.0.0.1:3001/crdt-sync".into(),
            secret: [3; 32],
            expires_at: Timestamp::from_millis(99),
        };
        let s = t.to_string();
        assert!(s.starts_with(PREFIX));
        assert_eq!(s.parse::<Ticket>().unwrap(), t);
        assert!("huskies-ticket-v1:zz".parse::<Ticket>().is_err());
        assert!(!format!("{t:?}").contains("secret"));
    }
}

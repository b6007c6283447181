//! The postcard helpers every stored or signed structure uses: encoding into a caller's
//! buffer, checking that bytes are the canonical encoding of a value, and decoding with a
//! typed `Corrupt` error. A leaf module: it depends on nothing else in the crate but the
//! error type, so op encoding and the store can both use it without an import cycle.

use serde::{de::DeserializeOwned, Serialize};

use crate::error::Error;

/// Encodes a stored record (postcard).
pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("records always encode")
}

/// Appends `v`'s postcard encoding to `out` (no intermediate buffer, no regrowth from
/// empty: for records on the hot path, written into a buffer sized beforehand).
pub(crate) fn encode_into<T: Serialize>(v: &T, out: &mut Vec<u8>) {
    postcard::serialize_with_flavor(v, AppendTo(out)).expect("records always encode")
}

/// A postcard output that appends to a caller's `Vec`.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Whether `v`'s postcard encoding is exactly `bytes`, checked while encoding: nothing is
/// allocated or copied, and a mismatch stops at its first byte.
pub(crate) fn encodes_to<T: Serialize>(v: &T, bytes: &[u8]) -> bool {
    let mut rest = bytes;
    postcard::serialize_with_flavor(v, Matches(&mut rest)).is_ok() && rest.is_empty()
}

/// A postcard output that compares what is written with expected bytes, failing at the
/// first difference (or when the expected bytes run out).
struct Matches<'a, 'b>(&'a mut &'b [u8]);

impl postcard::ser_flavors::Flavor for Matches<'_, '_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        match self.0.split_at_checked(data.len()) {
            Some((head, tail)) if head == data => {
                *self.0 = tail;
                Ok(())
            }
            _ => Err(postcard::Error::SerializeBufferFull),
        }
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Decodes a stored record, reporting what failed.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Error> {
    postcard::from_bytes(bytes).map_err(|e| Error::Corrupt(format!("{what} does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_exact_encoding() {
        let v: (u32, String, Option<u64>) = (300, "story".into(), Some(7));
        let bytes = encode(&v);
        assert!(encodes_to(&v, &bytes));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(!encodes_to(&v, &longer), "trailing bytes");
        assert!(!encodes_to(&v, &bytes[..bytes.len() - 1]), "short");
        let mut flipped = bytes.clone();
        flipped[2] ^= 1;
        assert!(!encodes_to(&v, &flipped), "a changed byte");
        // An overlong varint for 300 (postcard decodes it, but it is not canonical).
        let mut overlong = vec![0xac, 0x82, 0x00];
        overlong.extend_from_slice(&bytes[2..]);
        let back: (u32, String, Option<u64>) = postcard::from_bytes(&overlong).unwrap();
        assert_eq!(back, v);
        assert!(!encodes_to(&back, &overlong));
    }
}

//! A node's signing key and its file in the home.

use std::fs;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::hazmat::{raw_sign, ExpandedSecretKey};
use ed25519_dalek::{Sha512, Signature, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;

use crate::error::Error;
use crate::id::NodeId;

const KEY_FILE_HEADER: &str = "huskies-node-key v1";

/// A node's Ed25519 signing key. The node id is its public key.
pub struct NodeKey {
    signing: SigningKey,
    /// The key expanded for signing (`SHA-512(seed)`: the clamped scalar and the nonce
    /// prefix), derived once. `SigningKey::sign` derives it again for every signature, a
    /// SHA-512 and a scalar reduction that an append of many ops would pay per op. Same
    /// signatures: Ed25519 signing is a function of the expanded key and the message.
    /// Zeroed on drop, like the `SigningKey`.
    expanded: ExpandedSecretKey,
}

impl NodeKey {
    /// A fresh key from the caller's RNG (the core never reads an RNG by itself).
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self::from_signing(SigningKey::generate(rng))
    }

    /// A key from a 32-byte seed (tests, simulators).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self::from_signing(SigningKey::from_bytes(&seed))
    }

    fn from_signing(signing: SigningKey) -> Self {
        let expanded = ExpandedSecretKey::from(signing.as_bytes());
        Self { signing, expanded }
    }

    /// This key's node id.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_bytes(self.signing.verifying_key().to_bytes())
    }

    /// A second handle on the same key, for a signing thread that must not borrow the
    /// node (`Node::execute_groups`). Stays inside the crate.
    pub(crate) fn duplicate(&self) -> NodeKey {
        Self::from_signing(self.signing.clone())
    }

    /// Signs `message`: byte for byte what `SigningKey::sign` gives (pure Ed25519), from
    /// the key expanded once.
    pub(crate) fn sign(&self, message: &[u8]) -> Signature {
        raw_sign::<Sha512>(&self.expanded, message, self.signing.as_ref())
    }

    /// Writes the key to a new file with mode 0600 (never overwrites).
    pub fn save_new(&self, path: &Path) -> Result<(), Error> {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(path)
            .map_err(|e| Error::io(format!("creating key file {}", path.display()), e))?;
        let text = format!("{KEY_FILE_HEADER}\n{}\n", hex::encode(self.signing.to_bytes()));
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(format!("writing key file {}", path.display()), e))
    }

    /// Reads a key file, refusing one that others can read or that is malformed.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let meta =
            fs::metadata(path).map_err(|e| Error::io(format!("reading key file {}", path.display()), e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::Unauthorized(format!(
                    "key file {} has mode {mode:o}; it must be readable by its owner only (chmod 600)",
                    path.display()
                )));
            }
        }
        if meta.len() > 4096 {
            return Err(Error::Corrupt(format!(
                "key file {} is too large to be a key",
                path.display()
            )));
        }
        let text = fs::read_to_string(path)
            .map_err(|e| Error::Corrupt(format!("key file {} is not text: {e}", path.display())))?;
        let mut lines = text.lines();
        let malformed = || Error::Corrupt(format!("key file {} is malformed", path.display()));
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(malformed());
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(lines.next().ok_or_else(malformed)?.trim(), &mut seed)
            .map_err(|_| malformed())?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(malformed());
        }
        Ok(Self::from_seed(seed))
    }
}

/// The verifying key of a node id; refuses points that do not decode and weak
/// (small-order) keys, which would let anyone forge signatures.
pub(crate) fn verifying_key(node: &NodeId) -> Option<VerifyingKey> {
    let vk = VerifyingKey::from_bytes(node.as_bytes()).ok()?;
    (!vk.is_weak()).then_some(vk)
}

/// Checks an Ed25519 signature (`verify_strict`) by `node` over `message`, given as two
/// 32-byte halves.
pub(crate) fn check_signature(node: &NodeId, message: &[u8], sig: &[[u8; 32]; 2]) -> bool {
    let Some(vk) = verifying_key(node) else {
        return false;
    };
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(&sig[0]);
    bytes[32..].copy_from_slice(&sig[1]);
    vk.verify_strict(message, &Signature::from_bytes(&bytes)).is_ok()
}

/// Splits a signature into two 32-byte halves (serde handles arrays up to 32).
pub(crate) fn split_signature(sig: &Signature) -> [[u8; 32]; 2] {
    let b = sig.to_bytes();
    let mut halves = [[0u8; 32]; 2];
    halves[0].copy_from_slice(&b[..32]);
    halves[1].copy_from_slice(&b[32..]);
    halves
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;

    #[test]
    fn signatures_are_those_of_the_plain_signing_key() {
        // The key is expanded once (`NodeKey::expanded`); every signature must still be
        // the one `SigningKey::sign` makes, or ids would stay but stored bytes would not.
        for seed in [
            [0u8; 32],
            [7; 32],
            [0xff; 32],
            *b"huskies expanded key test seed!!",
        ] {
            let key = NodeKey::from_seed(seed);
            let plain = SigningKey::from_bytes(&seed);
            let copy = key.duplicate();
            for len in [0usize, 1, 48, 200] {
                let message: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed[0]).collect();
                let want = plain.sign(&message);
                assert_eq!(key.sign(&message), want, "seed {seed:?}, message of {len} bytes");
                assert_eq!(copy.sign(&message), want, "a duplicate signs the same");
                assert!(plain.verifying_key().verify_strict(&message, &want).is_ok());
            }
        }
    }

    #[test]
    fn key_files_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = NodeKey::from_seed([7; 32]);
        key.save_new(&path).unwrap();
        assert!(key.save_new(&path).is_err(), "never overwrites");
        assert_eq!(NodeKey::load(&path).unwrap().node_id(), key.node_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let err = NodeKey::load(&path).err().unwrap();
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn malformed_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (i, text) in [
            "",
            "huskies-node-key v1\nzz\n",
            "other\n00\n",
            "huskies-node-key v1\n",
        ]
        .iter()
        .enumerate()
        {
            let path = dir.path().join(format!("k{i}"));
            fs::write(&path, text).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            }
            let err = NodeKey::load(&path).err().expect("must fail");
            assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
        }
    }
}

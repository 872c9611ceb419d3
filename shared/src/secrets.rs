//! Secrets at rest: what Messenger keeps for a customer and must be able to use again (the events signing secrets)
//! is sealed before it reaches Redis, so a Redis backup, a replica or an `HGETALL` holds no secret in clear.
//!
//! Sealing is XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) under a 256-bit key from the environment,
//! `MESSENGER_SECRETS_KEY` (base64 or hex; `openssl rand -base64 32`). Each value gets a random 192-bit nonce, and the
//! customer it belongs to is authenticated with it, so a sealed value copied to another customer does not open.
//! The stored form is `enc1:<key id>:<base64url(nonce ‖ ciphertext)>`; the key id (8 hex digits of a hash of the
//! key) says which key sealed it.
//!
//! # Changing the key
//! 1. Generate a new key; start every producer with it as `MESSENGER_SECRETS_KEY` and the old one in
//!    `MESSENGER_SECRETS_KEY_PREVIOUS` (comma-separated if several).
//! 2. `producer secrets rewrap` seals every stored secret under the new key (deliveries also re-seal what they
//!    read, as they go); `producer secrets status` counts what is sealed under which key.
//! 3. When nothing is sealed under the old key, drop `MESSENGER_SECRETS_KEY_PREVIOUS`.
//!
//! Values stored before sealing existed (`whsec_…` in clear) are read as they are and sealed at their first use
//! once a key is configured.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// The start of every sealed value.
pub const SEALED_PREFIX: &str = "enc1:";

/// A sealing key and its id.
#[derive(Clone)]
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn parse(raw: &str, name: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let bytes = if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(raw).ok()
        } else {
            STANDARD.decode(raw).ok().or_else(|| URL_SAFE_NO_PAD.decode(raw.trim_end_matches('=')).ok())
        };
        let bytes = bytes.filter(|b| b.len() == 32).ok_or_else(|| {
            format!(
                "{name} must be 32 random bytes in base64 or hex (`openssl rand -base64 32`), not {} characters",
                raw.len()
            )
        })?;
        let id =
            hex::encode(&Sha256::new().chain_update(b"messenger secrets key\0").chain_update(&bytes).finalize()[..4]);
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes).expect("32 bytes is the key size");
        Ok(Self { id, cipher })
    }
}

/// The key new values are sealed with, and the previous ones still opened.
#[derive(Clone)]
pub struct Keyring {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field("previous", &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish()
    }
}

/// Why a stored value did not open.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("it is sealed and MESSENGER_SECRETS_KEY is not set")]
    NoKey,
    #[error("it is sealed under key {0}, which is neither MESSENGER_SECRETS_KEY nor in MESSENGER_SECRETS_KEY_PREVIOUS")]
    UnknownKey(String),
    #[error("it does not open under its key: altered, or sealed for another customer")]
    Tampered,
    #[error("it is not a sealed value")]
    Malformed,
}

/// A value opened: the secret, and whether it is stored as it should be (sealed under the current key).
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    pub plain: String,
    pub current: bool,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").field("current", &self.current).finish_non_exhaustive()
    }
}

/// How a stored value is kept, for `producer secrets status`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Storage {
    /// In clear, from before sealing.
    Clear,
    /// Sealed under the key with this id.
    Sealed(String),
}

/// How `stored` is kept.
pub fn storage(stored: &str) -> Storage {
    match stored.strip_prefix(SEALED_PREFIX).and_then(|rest| rest.split_once(':')) {
        Some((id, _)) => Storage::Sealed(id.to_owned()),
        None => Storage::Clear,
    }
}

impl Keyring {
    /// The keys from their settings: `current`, and `previous` comma-separated (may be empty).
    pub fn parse(current: &str, previous: Option<&str>) -> Result<Self, String> {
        let current = Key::parse(current, "MESSENGER_SECRETS_KEY")?;
        let previous = previous
            .into_iter()
            .flat_map(|p| p.split(','))
            .filter(|p| !p.trim().is_empty())
            .map(|p| Key::parse(p, "MESSENGER_SECRETS_KEY_PREVIOUS"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { current, previous })
    }

    /// The id of the key values are sealed with now.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `plain` for `owner` (the customer it belongs to: it does not open for another).
    pub fn seal(&self, plain: &str, owner: &str) -> String {
        let nonce: [u8; 24] = rand::random();
        let sealed = self
            .current
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain.as_bytes(), aad: owner.as_bytes() })
            .expect("sealing into a Vec cannot fail");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}{}:{}", self.current.id, URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Opens a sealed value of `owner`.
    fn open_sealed(&self, stored: &str, owner: &str) -> Result<Opened, SecretError> {
        let (id, body) =
            stored.strip_prefix(SEALED_PREFIX).and_then(|r| r.split_once(':')).ok_or(SecretError::Malformed)?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| SecretError::UnknownKey(id.to_owned()))?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| SecretError::Malformed)?;
        if bytes.len() < 24 {
            return Err(SecretError::Malformed);
        }
        let (nonce, sealed) = bytes.split_at(24);
        let plain = key
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: owner.as_bytes() })
            .map_err(|_| SecretError::Tampered)?;
        let plain = String::from_utf8(plain).map_err(|_| SecretError::Tampered)?;
        Ok(Opened { plain, current: key.id == self.current.id })
    }
}

/// Opens what is stored for `owner`: a sealed value (with `keys`), or a value from before sealing, as it is.
pub fn open(keys: Option<&Keyring>, stored: &str, owner: &str) -> Result<Opened, SecretError> {
    match (storage(stored), keys) {
        (Storage::Clear, _) => Ok(Opened { plain: stored.to_owned(), current: false }),
        (Storage::Sealed(_), None) => Err(SecretError::NoKey),
        (Storage::Sealed(_), Some(k)) => k.open_sealed(stored, owner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn sealed_values_open_for_their_owner_only_and_hold_nothing_in_clear() {
        let k = Keyring::parse(A, None).unwrap();
        let sealed = k.seal("whsec_c2VjcmV0", "acme");
        assert!(sealed.starts_with(&format!("enc1:{}:", k.current_id())), "{sealed}");
        assert!(!sealed.contains("c2VjcmV0"));
        assert_ne!(sealed, k.seal("whsec_c2VjcmV0", "acme"), "a new nonce each time");
        assert_eq!(open(Some(&k), &sealed, "acme").unwrap(), Opened { plain: "whsec_c2VjcmV0".into(), current: true });
        assert_eq!(open(Some(&k), &sealed, "globex"), Err(SecretError::Tampered));
        let mut altered = sealed.clone();
        altered.replace_range(sealed.len() - 3.., "AAA");
        assert_eq!(open(Some(&k), &altered, "acme"), Err(SecretError::Tampered));
        assert_eq!(open(None, &sealed, "acme"), Err(SecretError::NoKey));
    }

    #[test]
    fn a_rotated_key_opens_what_the_previous_one_sealed_and_says_it_is_not_current() {
        let old = Keyring::parse(A, None).unwrap();
        let sealed = old.seal("whsec_x", "acme");
        let new = Keyring::parse(B, Some(&format!(" {A} "))).unwrap();
        assert_ne!(new.current_id(), old.current_id());
        assert_eq!(open(Some(&new), &sealed, "acme").unwrap(), Opened { plain: "whsec_x".into(), current: false });
        let only_new = Keyring::parse(B, None).unwrap();
        assert_eq!(open(Some(&only_new), &sealed, "acme"), Err(SecretError::UnknownKey(old.current_id().into())));
        assert_eq!(storage(&sealed), Storage::Sealed(old.current_id().into()));
    }

    #[test]
    fn values_from_before_sealing_are_read_as_they_are() {
        assert_eq!(open(None, "whsec_abc", "acme").unwrap(), Opened { plain: "whsec_abc".into(), current: false });
        assert_eq!(storage("whsec_abc"), Storage::Clear);
    }

    #[test]
    fn keys_must_be_32_bytes() {
        for bad in ["", "short", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==", &"0".repeat(62)] {
            assert!(Keyring::parse(bad, None).unwrap_err().contains("32 random bytes"), "{bad}");
        }
        assert!(Keyring::parse(A, Some("nope")).unwrap_err().contains("MESSENGER_SECRETS_KEY_PREVIOUS"));
        assert!(!format!("{:?}", Keyring::parse(A, None).unwrap()).contains(A));
    }
}

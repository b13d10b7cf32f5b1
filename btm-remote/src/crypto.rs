//! The remote key of an encrypted offsite copy ("Keyed layout" in docs/FORMAT.md).
//!
//! One secret of 32 random bytes, kept in a file beside the node and never sent to the store.
//! From it, with `blake3::derive_key` and distinct contexts: an XChaCha20-Poly1305 key that
//! seals every object, a name key that turns content hashes into object names
//! (`blake3::keyed_hash`, so a listing says nothing about content while pushes with the same key
//! still dedup), and the seed of an ed25519 key that signs every height pointer.
//!
//! A sealed object is `btm.enc\n`, a version byte, a random 24-byte nonce, then the ciphertext
//! and its 16-byte tag; the additional data is the magic, the version and the object's path,
//! so an object moved to another name no longer opens.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::error::{RemoteError, Result, fail, io};

/// Magic of a sealed object.
pub const SEAL_MAGIC: &[u8; 8] = b"btm.enc\n";
/// Version byte of the sealed format.
pub const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed object has beyond its plaintext: magic, version, nonce, tag (49).
pub const SEAL_OVERHEAD: usize = SEAL_MAGIC.len() + 1 + NONCE_LEN + TAG_LEN;
/// Length of an ed25519 signature at the head of a sealed pointer's plaintext.
pub const SIG_LEN: usize = 64;

const CTX_ENCRYPT: &str = "btm offsite 2026-12 remote key: object sealing (XChaCha20-Poly1305)";
const CTX_NAMES: &str = "btm offsite 2026-12 remote key: object names (blake3 keyed)";
const CTX_SIGN: &str = "btm offsite 2026-12 remote key: pointer signing seed (ed25519)";
/// Domain of a pointer signature: this, the pointer's path, a zero byte, its JSON bytes.
const SIG_DOMAIN: &[u8] = b"btm.ptr.sig.v1\0";

/// The keys derived from one remote key file.
pub struct RemoteKey {
    cipher: XChaCha20Poly1305,
    name_key: [u8; 32],
    signing: SigningKey,
    public: VerifyingKey,
}

impl std::fmt::Debug for RemoteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteKey(public {})", self.public_hex())
    }
}

/// Why a sealed object did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Not in the sealed format at all (a plaintext object, or truncated).
    NotSealed,
    /// A sealed format version this btm does not read.
    Version(u8),
    /// The tag does not verify: written without this key (forged), altered, or moved.
    Forged,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::NotSealed => write!(
                f,
                "is not sealed with a remote key (plaintext or truncated): it was not written by \
                 a btm holding this remote's key"
            ),
            OpenError::Version(v) => write!(f, "is sealed in format version {v}: use a newer btm"),
            OpenError::Forged => write!(
                f,
                "does not authenticate under this remote's key: it was forged by someone with \
                 access to the bucket but not the key, altered, or moved from another name"
            ),
        }
    }
}

impl RemoteKey {
    /// The keys of the secret `secret`.
    pub fn from_secret(secret: &[u8; 32]) -> RemoteKey {
        let enc = blake3::derive_key(CTX_ENCRYPT, secret);
        let name_key = blake3::derive_key(CTX_NAMES, secret);
        let seed = blake3::derive_key(CTX_SIGN, secret);
        let signing = SigningKey::from_bytes(&seed);
        RemoteKey {
            cipher: XChaCha20Poly1305::new(&enc.into()),
            name_key,
            public: signing.verifying_key(),
            signing,
        }
    }

    /// Writes a new random key to `out` (mode 0600, 64 hex digits and a newline); refuses to
    /// overwrite an existing file.
    pub fn generate(out: &Path) -> Result<RemoteKey> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| {
            RemoteError::Config(format!("no randomness from the operating system: {e}"))
        })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    RemoteError::Refused(format!(
                        "{} exists: not overwriting a remote key (losing it loses the offsite \
                         copy made with it); pick another file",
                        out.display()
                    ))
                } else {
                    RemoteError::Io {
                        context: format!("creating {}", out.display()),
                        source: e,
                    }
                }
            })?;
        f.write_all(format!("{}\n", btm_log::hex(&secret)).as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(io(format!("writing {}", out.display())))?;
        Ok(RemoteKey::from_secret(&secret))
    }

    /// Reads a key file: 32 bytes, as 64 hex digits (surrounding whitespace ignored) or raw.
    /// Refuses a file that group or others may read.
    pub fn load(path: &Path) -> Result<RemoteKey> {
        let md = std::fs::metadata(path)
            .map_err(io(format!("reading the remote key {}", path.display())))?;
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            fail!(
                Refused,
                "remote key {} is readable or writable by group or others (mode {mode:04o}): \
                 `chmod 600 {}` first",
                path.display(),
                path.display()
            );
        }
        let b = std::fs::read(path)
            .map_err(io(format!("reading the remote key {}", path.display())))?;
        let secret = parse_secret(&b).ok_or_else(|| {
            RemoteError::Config(format!(
                "{} is not a remote key (32 bytes, raw or as 64 hex digits): make one with \
                 `btm-agent remote-key generate --out FILE`",
                path.display()
            ))
        })?;
        Ok(RemoteKey::from_secret(&secret))
    }

    /// The ed25519 public key, in hex (recorded in the store's layout marker).
    pub fn public_hex(&self) -> String {
        btm_log::hex(self.public.as_bytes())
    }

    /// The name of the object whose content hash is `hash`.
    pub fn object_name(&self, hash: &[u8; 32]) -> [u8; 32] {
        *blake3::keyed_hash(&self.name_key, hash).as_bytes()
    }

    /// Seals `plain` for the object at `path`.
    pub fn seal(&self, path: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("randomness from the operating system");
        let mut out = Vec::with_capacity(plain.len() + SEAL_OVERHEAD);
        out.extend_from_slice(SEAL_MAGIC);
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        let aad = aad(path);
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any length btm writes");
        out.extend_from_slice(&ct);
        out
    }

    /// The plaintext of the sealed object at `path`, or why not.
    pub fn open(&self, path: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let head = SEAL_MAGIC.len() + 1 + NONCE_LEN;
        if sealed.len() < head + TAG_LEN || &sealed[..8] != SEAL_MAGIC {
            return Err(OpenError::NotSealed);
        }
        if sealed[8] != SEAL_VERSION {
            return Err(OpenError::Version(sealed[8]));
        }
        self.cipher
            .decrypt(
                XNonce::from_slice(&sealed[9..head]),
                Payload {
                    msg: &sealed[head..],
                    aad: &aad(path),
                },
            )
            .map_err(|_| OpenError::Forged)
    }

    /// The signature of a pointer at `path` with JSON bytes `json`.
    pub fn sign(&self, path: &str, json: &[u8]) -> [u8; SIG_LEN] {
        self.signing.sign(&sig_message(path, json)).to_bytes()
    }

    /// Whether `sig` is this key's signature of the pointer at `path` with bytes `json`.
    pub fn verify(&self, path: &str, json: &[u8], sig: &[u8; SIG_LEN]) -> bool {
        self.public
            .verify_strict(&sig_message(path, json), &Signature::from_bytes(sig))
            .is_ok()
    }
}

fn aad(path: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(9 + path.len());
    a.extend_from_slice(SEAL_MAGIC);
    a.push(SEAL_VERSION);
    a.extend_from_slice(path.as_bytes());
    a
}

fn sig_message(path: &str, json: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIG_DOMAIN.len() + path.len() + 1 + json.len());
    m.extend_from_slice(SIG_DOMAIN);
    m.extend_from_slice(path.as_bytes());
    m.push(0);
    m.extend_from_slice(json);
    m
}

/// 32 raw bytes, or 64 hex digits with optional surrounding whitespace.
fn parse_secret(b: &[u8]) -> Option<[u8; 32]> {
    if let Ok(s) = std::str::from_utf8(b)
        && let Some(k) = crate::layout::parse_hex32(&s.trim().to_ascii_lowercase())
    {
        return Some(k);
    }
    b.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> RemoteKey {
        RemoteKey::from_secret(&[n; 32])
    }

    #[test]
    fn sealed_objects_open_only_with_their_key_and_path() {
        let k = key(1);
        let s = k.seal("records/ab/cd", b"hello");
        assert_eq!(s.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(SEAL_OVERHEAD, 49);
        assert_eq!(k.open("records/ab/cd", &s).unwrap(), b"hello");
        assert_eq!(key(2).open("records/ab/cd", &s), Err(OpenError::Forged));
        assert_eq!(k.open("records/ab/ce", &s), Err(OpenError::Forged));
        let mut bad = s.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(k.open("records/ab/cd", &bad), Err(OpenError::Forged));
        assert_eq!(k.open("x", b"{\"format\":1}"), Err(OpenError::NotSealed));
        let mut v2 = s.clone();
        v2[8] = 2;
        assert_eq!(k.open("records/ab/cd", &v2), Err(OpenError::Version(2)));
        // A fresh nonce each time: the same plaintext never seals to the same bytes.
        assert_ne!(k.seal("p", b"same"), k.seal("p", b"same"));
    }

    #[test]
    fn subkeys_are_distinct_and_names_are_keyed() {
        let k = key(3);
        let h = *blake3::hash(b"content").as_bytes();
        assert_ne!(k.object_name(&h), h);
        assert_eq!(k.object_name(&h), key(3).object_name(&h));
        assert_ne!(k.object_name(&h), key(4).object_name(&h));
        let secret = [3u8; 32];
        let subs = [
            blake3::derive_key(CTX_ENCRYPT, &secret),
            blake3::derive_key(CTX_NAMES, &secret),
            blake3::derive_key(CTX_SIGN, &secret),
        ];
        assert!(subs[0] != subs[1] && subs[1] != subs[2] && subs[0] != subs[2]);
        assert!(subs.iter().all(|s| *s != secret));
    }

    #[test]
    fn signatures_bind_key_path_and_bytes() {
        let k = key(5);
        let sig = k.sign("volumes/v/heights/1", b"{}");
        assert!(k.verify("volumes/v/heights/1", b"{}", &sig));
        assert!(!k.verify("volumes/v/heights/2", b"{}", &sig));
        assert!(!k.verify("volumes/v/heights/1", b"{ }", &sig));
        assert!(!key(6).verify("volumes/v/heights/1", b"{}", &sig));
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("k");
        let made = RemoteKey::generate(&f).unwrap();
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(RemoteKey::load(&f).unwrap().public_hex(), made.public_hex());
        let e = RemoteKey::generate(&f).unwrap_err();
        assert!(matches!(e, RemoteError::Refused(_)), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = RemoteKey::load(&f).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        // Raw 32 bytes are accepted too; anything else is not a key.
        let raw = d.path().join("raw");
        std::fs::write(&raw, [9u8; 32]).unwrap();
        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            RemoteKey::load(&raw).unwrap().public_hex(),
            key(9).public_hex()
        );
        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&raw, b"short").unwrap();
        assert!(RemoteKey::load(&raw).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn seal_open_roundtrip(secret in any::<[u8; 32]>(), path in "[a-z/0-9]{0,40}",
                               plain in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let k = RemoteKey::from_secret(&secret);
            let s = k.seal(&path, &plain);
            prop_assert_eq!(s.len(), plain.len() + SEAL_OVERHEAD);
            prop_assert_eq!(k.open(&path, &s).unwrap(), plain);
        }
    }
}

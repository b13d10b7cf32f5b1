//! What a remote key changes in how objects are named, written and read ("Keyed layout" in
//! docs/FORMAT.md): every method here is the plaintext layout's behaviour when the remote has no
//! key, so push, restore and prune call them without caring which layout the store has.

use bytes::Bytes;
use object_store::path::Path as ObjPath;

use crate::crypto::{OpenError, RemoteKey, SIG_LEN};
use crate::error::{RemoteError, Result, fail};
use crate::layout::{self, Marker, Pointer, RecordObj};
use crate::{Remote, now_ms};

impl Remote {
    /// Uses `key` for everything this remote writes and reads (a keyed store).
    pub fn with_key(mut self, key: Option<RemoteKey>) -> Remote {
        self.key = key.map(std::sync::Arc::new);
        self
    }

    /// Whether objects are sealed (a key was given).
    pub fn keyed(&self) -> bool {
        self.key.is_some()
    }

    /// The name of the object whose content hash is `hash`: the hash itself, or its keyed hash.
    pub(crate) fn name_of(&self, hash: &[u8; 32]) -> [u8; 32] {
        self.key.as_ref().map_or(*hash, |k| k.object_name(hash))
    }

    /// Where the payload with content hash `hash` lives.
    pub(crate) fn object_path(&self, hash: &[u8; 32]) -> ObjPath {
        layout::object_path(&self.name_of(hash))
    }

    /// The key (name) of an encoded record object.
    pub(crate) fn record_key(&self, encoded: &[u8]) -> [u8; 32] {
        self.name_of(&RecordObj::key(encoded))
    }

    /// Where the pointer of `height` to record `record` of volume `name` lives.
    pub(crate) fn pointer_path(&self, name: &str, height: u64, record: &[u8; 32]) -> ObjPath {
        if self.keyed() {
            layout::sealed_pointer_path(name, height, record)
        } else {
            layout::pointer_path(name, height, record)
        }
    }

    /// The bytes to store at `p` for `plain`.
    pub(crate) fn seal(&self, p: &ObjPath, plain: Vec<u8>) -> Vec<u8> {
        match &self.key {
            Some(k) => k.seal(p.as_ref(), &plain),
            None => plain,
        }
    }

    /// How many bytes [`Remote::seal`] stores for `plain` bytes.
    pub(crate) fn sealed_len(&self, plain: u64) -> u64 {
        plain
            + if self.keyed() {
                crate::crypto::SEAL_OVERHEAD as u64
            } else {
                0
            }
    }

    /// The plaintext of the bytes stored at `p`, or why they are not this store's.
    pub(crate) fn unseal(&self, p: &ObjPath, stored: Bytes) -> Result<Bytes> {
        match &self.key {
            None => Ok(stored),
            Some(k) => k
                .open(p.as_ref(), &stored)
                .map(Bytes::from)
                .map_err(|e| self.not_ours(p, &e)),
        }
    }

    /// The error for an object that does not open under this store's key.
    pub(crate) fn not_ours(&self, p: &ObjPath, e: &OpenError) -> RemoteError {
        let msg = format!(
            "{} {e}; refused (not sealed by this volume's remote key)",
            self.ctx("object", p)
        );
        match e {
            OpenError::Version(_) => RemoteError::Refused(msg),
            _ => RemoteError::Damaged(msg),
        }
    }

    /// A downloaded record object (as stored) opened and checked against its name.
    pub(crate) fn decode_record(
        &self,
        p: &ObjPath,
        stored: Bytes,
        key: &[u8; 32],
    ) -> Result<RecordObj> {
        let plain = self.unseal(p, stored)?;
        RecordObj::decode_with(&plain, key, |b| self.record_key(b)).map_err(|why| {
            RemoteError::Damaged(format!(
                "record object {p} on {} is damaged: {why}; repair it with `btm-agent push \
                 --verify` from the source log",
                self.url
            ))
        })
    }

    /// The bytes to store for pointer `ptr` at `p`: JSON, or (keyed) its signature and JSON,
    /// sealed.
    pub(crate) fn encode_pointer(&self, p: &ObjPath, ptr: &Pointer) -> Vec<u8> {
        let json = serde_json::to_vec_pretty(ptr).expect("serializable");
        match &self.key {
            None => json,
            Some(k) => {
                let mut plain = k.sign(p.as_ref(), &json).to_vec();
                plain.extend_from_slice(&json);
                k.seal(p.as_ref(), &plain)
            }
        }
    }

    /// A downloaded pointer: opened, its signature checked (keyed), parsed.
    pub(crate) fn decode_pointer(&self, p: &ObjPath, stored: Bytes) -> Result<Pointer> {
        let json = match &self.key {
            None => stored,
            Some(k) => {
                let plain = self.unseal(p, stored)?;
                let sig: Option<&[u8; SIG_LEN]> =
                    plain.get(..SIG_LEN).and_then(|s| s.try_into().ok());
                match sig {
                    Some(sig) if k.verify(p.as_ref(), &plain[SIG_LEN..], sig) => {
                        plain.slice(SIG_LEN..)
                    }
                    _ => fail!(
                        Damaged,
                        "pointer {p} on {} is not signed by this volume's remote key: refused \
                         (forged, or written with another key)",
                        self.url
                    ),
                }
            }
        };
        serde_json::from_slice(&json).map_err(|e| {
            RemoteError::Damaged(format!(
                "{p} on {} is not a btm height pointer: {e}",
                self.url
            ))
        })
    }

    /// The store's layout, as [`Remote::check_layout`] found it (an empty store: what a push
    /// would make it; 1 stands for 2 with a key).
    fn layout(&self) -> u32 {
        self.layout_ok.get().copied().unwrap_or(self.new_layout)
    }

    /// Whether pushes to this store write packs (layouts 3 and 4).
    pub(crate) fn packed(&self) -> bool {
        self.layout() >= layout::LAYOUT_PACKED
    }

    /// Whether pushes to this store compress record objects (layout 4).
    pub(crate) fn compressed_records(&self) -> bool {
        self.layout() >= layout::LAYOUT_ZSTD_RECORDS
    }

    /// Checks that the store's layout and this remote's key go together, once per `Remote`:
    /// a sealed store needs its key, a plaintext store takes none. With `writing`, an empty
    /// store becomes a layout-4 store (its marker is written), or what
    /// [`Remote::with_new_layout`] says.
    pub(crate) fn check_layout(&self, writing: bool) -> Result<()> {
        if self.layout_ok.get().is_some() {
            return Ok(());
        }
        let p = ObjPath::from(layout::MARKER);
        let found = match (self.get_opt(&p)?, &self.key) {
            (Some(b), key) => {
                let m: Marker = serde_json::from_slice(&b).map_err(|e| {
                    RemoteError::Damaged(format!(
                        "{p} on {} is not a btm layout marker: {e}",
                        self.url
                    ))
                })?;
                let sealed = match m.layout {
                    layout::LAYOUT_KEYED => true,
                    layout::LAYOUT_PACKED | layout::LAYOUT_ZSTD_RECORDS => m.sealing != "none",
                    _ => fail!(
                        Refused,
                        "{} has remote layout {} (from {p}); this btm reads layouts 1 to {}: \
                         use a newer btm",
                        self.url,
                        m.layout,
                        layout::LAYOUT_ZSTD_RECORDS
                    ),
                };
                match key {
                    None if sealed => fail!(
                        KeyMismatch,
                        "this remote is encrypted ({} has a keyed layout, public key {}): give \
                         --remote-key FILE (or BTM_REMOTE_KEY_FILE)",
                        self.url,
                        // The marker is anyone's to write: no byte slicing of its text.
                        m.public_key.chars().take(16).collect::<String>()
                    ),
                    Some(_) if !sealed => fail!(
                        KeyMismatch,
                        "{} holds a plaintext offsite copy (layout {}, unsealed): a remote key \
                         is not used with it. Drop --remote-key to use it as it is, or push with \
                         the key to a new URL or prefix",
                        self.url,
                        m.layout
                    ),
                    Some(k) if k.public_hex() != m.public_key => fail!(
                        KeyMismatch,
                        "wrong remote key for {}: it was written with the key whose public key \
                         is {}, this key's is {}; give the key this remote was pushed with",
                        self.url,
                        m.public_key,
                        k.public_hex()
                    ),
                    _ => {}
                }
                m.layout
            }
            (None, key) => {
                let mut used = false;
                for dir in ["volumes", "records", "objects", "packs"] {
                    if self.any_under(&ObjPath::from(dir))? {
                        used = true;
                        break;
                    }
                }
                match (used, key) {
                    // Layout 1: plaintext, loose payload objects.
                    (true, None) => 1,
                    (true, Some(_)) => fail!(
                        KeyMismatch,
                        "{} holds a plaintext offsite copy (layout 1, no {p}): a remote key is \
                         not used with it. Drop --remote-key to use it as it is, or push with \
                         the key to a new URL or prefix",
                        self.url
                    ),
                    // Nothing there yet: nothing to read either.
                    (false, _) if !writing => return Ok(()),
                    // Layout 1 has no marker.
                    (false, None) if self.new_layout < layout::LAYOUT_PACKED => 1,
                    (false, key) => {
                        let key = key.as_ref();
                        let packed = self.new_layout >= layout::LAYOUT_PACKED;
                        let m = Marker {
                            layout: if packed {
                                self.new_layout
                            } else {
                                layout::LAYOUT_KEYED
                            },
                            sealing: key.map_or("none", |_| "xchacha20poly1305").into(),
                            names: key.map_or("blake3", |_| "blake3-keyed").into(),
                            signatures: key.map_or("none", |_| "ed25519").into(),
                            public_key: key.map(|k| k.public_hex()).unwrap_or_default(),
                            packs: packed.then(|| "btm.pak".into()),
                            created_unix_ms: now_ms(),
                        };
                        self.put(&p, serde_json::to_vec_pretty(&m).expect("serializable"))?;
                        // Another first push with another key may have raced this one: read
                        // it back.
                        return self.check_layout(false);
                    }
                }
            }
        };
        let _ = self.layout_ok.set(found);
        Ok(())
    }

    /// Whether anything is stored under `prefix` (one listing page at most).
    fn any_under(&self, prefix: &ObjPath) -> Result<bool> {
        use futures::StreamExt;
        self.rt
            .block_on(async { self.store.list(Some(prefix)).next().await.transpose() })
            .map(|x| x.is_some())
            .map_err(|e| self.fail("listing", prefix, e))
    }
}

//! Offsite copies: the log replicated to object storage (`s3://`, `gs://`, `az://`, `file://`)
//! and restored from it.
//!
//! The layout is specified in docs/FORMAT.md ("Remote layout"): content-addressed payload and
//! record objects shared by every volume under one URL, and per volume one small pointer per kept
//! height carrying a tag and user metadata. `push` uploads what the remote lacks, in an order
//! that leaves the remote consistent after any interruption (objects, then the record that uses
//! them, then its pointer); `restore` walks a pointer's chain back, checks every object against
//! its name, folds the metadata and replays with the local replayer, reading only payloads
//! whose bytes differ in the target. `prune` deletes what no pointer reaches.
//!
//! All storage access goes through the `object_store` crate (one maintained client for the
//! four schemes); credentials come from its usual environment variables (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`) and, for S3, `~/.aws/credentials` when the variables are absent.

mod counting;
pub mod crypto;
mod error;
mod keyed;
pub mod layout;
mod lock;
pub mod pack;
mod pins;
mod prune;
mod push;
mod restore;
mod retain;
mod unprivileged;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
pub use counting::RequestCounts;
pub use crypto::RemoteKey;
pub use error::{RemoteError, Result};
use error::{fail, io};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

pub use pins::remote_pins;
pub use prune::{PruneReport, prune};
pub use push::{PushOptions, PushReport, push, push_plan};
pub use restore::{RemoteHeight, RemoteReplay, list_heights, list_volumes, replay, resolve_volume};
pub use retain::RemoteRetention;
pub use verify::{RemoteVerifyReport, Subset, verify};

/// An open offsite location: the store, the URL's path as prefix, and a runtime to drive the
/// async client from our synchronous code.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Runtime,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Optional local cache of downloaded immutable objects (records and payloads).
    cache: Option<PathBuf>,
    /// The remote key of a keyed store (`keyed.rs`); `None` for the plaintext layout.
    key: Option<Arc<RemoteKey>>,
    /// Set once [`Remote::check_layout`] found the store's layout and the key agree: the
    /// layout number (1 to 4; what pushes write).
    layout_ok: std::sync::OnceLock<u32>,
    /// The layout an empty store gets: 4, or 3, or loose payload objects (1, or 2 with a key)
    /// for readers older than packs and for tests of older stores.
    new_layout: u32,
    /// Requests sent through `store` so far.
    counters: Arc<counting::Counters>,
    /// Restores keep set-uid/set-gid bits and uid/gid 0 as the store says (`unprivileged.rs`).
    privileged: bool,
}

fn retry_config() -> RetryConfig {
    // BTM_REMOTE_RETRY_SECS bounds how long one request is retried (object_store's default is
    // 3 minutes): tests and interactive use want failures fast.
    let secs = std::env::var("BTM_REMOTE_RETRY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180u64);
    RetryConfig {
        max_retries: if secs == 0 { 0 } else { 10 },
        retry_timeout: Duration::from_secs(secs),
        ..Default::default()
    }
}

/// `~/.aws/credentials` (or `AWS_SHARED_CREDENTIALS_FILE`), profile `AWS_PROFILE` or default:
/// the usual file the AWS tools read, used when the environment names no keys.
fn aws_shared_credentials() -> Option<(String, String, Option<String>)> {
    let path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let (mut id, mut secret, mut token, mut inside) = (None, None, None, false);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == profile;
        } else if inside && let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some((id?, secret?, token))
}

/// The layout a first push gives an empty store: `BTM_REMOTE_NEW_LAYOUT` (1: one object per
/// payload, readable by btm before packs; 3: packs, readable by btm before layout 4; 4, the
/// default).
fn new_layout_from_env() -> Result<u32> {
    match std::env::var("BTM_REMOTE_NEW_LAYOUT") {
        Err(_) => Ok(layout::LAYOUT_ZSTD_RECORDS),
        Ok(v) => match v.trim().parse() {
            Ok(n @ (1 | 3 | 4)) => Ok(n),
            _ => fail!(
                Config,
                "BTM_REMOTE_NEW_LAYOUT={v:?}: give 1 (one object per payload), 3 (packs) or 4 \
                 (packs and compressed records, the default); stores that exist keep theirs"
            ),
        },
    }
}

impl Remote {
    /// Opens `url`. Nothing is contacted yet.
    pub fn open(url: &str) -> Result<Remote> {
        let layout = new_layout_from_env()?;
        Ok(Remote::open_url(url)?.with_new_layout(layout))
    }

    fn open_url(url: &str) -> Result<Remote> {
        let parsed = url::Url::parse(url).map_err(|e| {
            RemoteError::Config(format!(
                "--remote {url:?} is not a URL ({e}): use s3://BUCKET/PREFIX, gs://, az:// or \
                 file:///DIR"
            ))
        })?;
        let opening = |hint: &str| {
            let url = url.to_string();
            let hint = hint.to_string();
            move |e: object_store::Error| RemoteError::Config(format!("opening {url}{hint}: {e}"))
        };
        let prefix = parsed.path().trim_matches('/').to_string();
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "s3" | "s3a" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_retry(retry_config());
                if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
                    && let Some((id, secret, token)) = aws_shared_credentials()
                {
                    b = b.with_access_key_id(id).with_secret_access_key(secret);
                    if let Some(t) = token {
                        b = b.with_token(t);
                    }
                }
                match std::env::var("AWS_ENDPOINT_URL") {
                    Ok(ep) if ep.starts_with("http://") => {
                        b = b.with_endpoint(ep).with_allow_http(true);
                    }
                    // Over TLS the transport protects the body, and every object is checked
                    // against its blake3 name on download: hashing each body again for the
                    // signature only costs CPU (a quarter of push's, measured).
                    // AWS_UNSIGNED_PAYLOAD=false restores signed bodies.
                    _ if std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_none() => {
                        b = b.with_unsigned_payload(true);
                    }
                    _ => {}
                }
                Arc::new(b.build().map_err(opening(""))?)
            }
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry_config())
                    .build()
                    .map_err(opening(
                        " (credentials: GOOGLE_APPLICATION_CREDENTIALS=FILE)",
                    ))?,
            ),
            "az" | "azure" | "abfs" | "abfss" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry_config())
                    .build()
                    .map_err(opening(
                        " (set AZURE_STORAGE_ACCOUNT_NAME and a credential such as \
                         AZURE_STORAGE_ACCOUNT_KEY)",
                    ))?,
            ),
            "file" => {
                if parsed
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                    || parsed.path().trim_matches('/').is_empty()
                {
                    fail!(
                        Config,
                        "{url}: a file URL names an absolute directory, with three slashes: \
                         file:///var/backups/btm"
                    );
                }
                let dir = PathBuf::from(parsed.path());
                std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
                return Ok(Remote::with_store(
                    url,
                    Arc::new(
                        object_store::local::LocalFileSystem::new_with_prefix(&dir)
                            .map_err(opening(""))?,
                    ),
                ));
            }
            other => fail!(
                Config,
                "unsupported remote scheme {other:?} in {url}: use s3://, gs://, az:// or file://"
            ),
        };
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            store
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(
                store,
                ObjPath::from(prefix),
            ))
        };
        Ok(Remote::with_store(url, store))
    }

    fn with_store(url: &str, store: Arc<dyn ObjectStore>) -> Remote {
        let counters = Arc::new(counting::Counters::default());
        let store: Arc<dyn ObjectStore> = Arc::new(counting::Counting {
            inner: store,
            n: counters.clone(),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        Remote {
            url: url.to_string(),
            store,
            rt,
            // Requests in flight (BTM_REMOTE_CONCURRENCY): more hides more latency on a
            // distant store, at the cost of memory (up to 64 MiB per upload batch anyway).
            concurrency: std::env::var("BTM_REMOTE_CONCURRENCY")
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(16),
            cache: None,
            key: None,
            layout_ok: std::sync::OnceLock::new(),
            new_layout: layout::LAYOUT_ZSTD_RECORDS,
            counters,
            privileged: false,
        }
    }

    /// Makes restores keep set-uid/set-gid bits and ownership by uid/gid 0 as recorded
    /// (`replay --remote --restore-privileged`); by default they are dropped (`unprivileged.rs`).
    pub fn with_restore_privileged(mut self, yes: bool) -> Remote {
        self.privileged = yes;
        self
    }

    /// Makes a first push to an empty store write layout 1 (or 2 with a key): one object per
    /// payload, as btm wrote before packs (readable by older btm). Stores that exist keep
    /// their layout either way.
    pub fn with_legacy_layout(self, legacy: bool) -> Remote {
        self.with_new_layout(if legacy {
            1
        } else {
            layout::LAYOUT_ZSTD_RECORDS
        })
    }

    /// Makes a first push to an empty store write `layout` (1 to 4; 1 with a key is 2).
    /// Stores that exist keep their layout. Tests of older stores, and readers older than
    /// layout 4 (btm before record objects were compressed reads layout 3).
    pub fn with_new_layout(mut self, layout: u32) -> Remote {
        self.new_layout = layout.clamp(1, layout::LAYOUT_ZSTD_RECORDS);
        self
    }

    /// Holds uploads and downloads to at most `up` and `down` bytes per second (averaged over
    /// requests; `None`: no limit).
    pub fn with_limits(self, up: Option<u64>, down: Option<u64>) -> Remote {
        use std::sync::atomic::Ordering::Relaxed;
        self.counters.up.rate.store(up.unwrap_or(0), Relaxed);
        self.counters.down.rate.store(down.unwrap_or(0), Relaxed);
        self
    }

    /// Requests sent to the store so far, by kind.
    pub fn requests(&self) -> RequestCounts {
        self.counters.snapshot()
    }

    /// Keeps downloaded records and payloads in `dir` (checked again on every use).
    pub fn with_cache(mut self, dir: Option<PathBuf>) -> Remote {
        self.cache = dir;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn ctx(&self, what: &str, p: &ObjPath) -> String {
        format!("{what} {p} on {}", self.url)
    }

    /// One readable error for a failed request: what was done, the store's message once
    /// (its error chain repeats itself), and what to check.
    pub(crate) fn fail(&self, what: &str, p: &ObjPath, e: object_store::Error) -> RemoteError {
        let msg = e.to_string();
        let hint = if msg.contains("NoSuchBucket") {
            "; the bucket does not exist: create it first"
        } else if msg.contains("AccessDenied")
            || msg.contains("403")
            || msg.contains("InvalidAccessKeyId")
            || msg.contains("SignatureDoesNotMatch")
        {
            "; check the credentials (AWS_*, GOOGLE_*, AZURE_* variables or ~/.aws/credentials)"
        } else if matches!(e, object_store::Error::Generic { .. })
            && (msg.contains("error sending request") || msg.contains("Connect"))
        {
            "; the endpoint is unreachable: check the URL, the endpoint settings (AWS_ENDPOINT_URL, \
             AZURITE_BLOB_STORAGE_URL, ...) and the network"
        } else {
            ""
        };
        RemoteError::Store {
            message: format!("{} failed{hint}: {msg}", self.ctx(what, p)),
            source: Some(e),
        }
    }

    /// Whether `p` exists.
    pub(crate) fn exists(&self, p: &ObjPath) -> Result<bool> {
        self.rt
            .block_on(exists(&*self.store, p))
            .map_err(|e| self.fail("checking", p, e))
    }

    /// Which of `paths` exist (asked `concurrency` at a time).
    pub(crate) fn exist_many(&self, paths: &[ObjPath]) -> Result<Vec<bool>> {
        let store = &*self.store;
        self.rt.block_on(async {
            futures::stream::iter(paths.iter().map(|p| async move {
                exists(store, p)
                    .await
                    .map_err(|e| self.fail("checking", p, e))
            }))
            .buffered(self.concurrency)
            .try_collect()
            .await
        })
    }

    /// For each payload object: `Some(true)` intact, `Some(false)` damaged (or, keyed, not
    /// sealed by this key), `None` missing (each downloaded, opened and decoded against its hash).
    pub(crate) fn objects_intact(
        &self,
        paths: &[ObjPath],
        hashes: &[[u8; 32]],
    ) -> Result<Vec<Option<bool>>> {
        let store = &*self.store;
        self.rt.block_on(async {
            futures::stream::iter(paths.iter().zip(hashes).map(|(p, h)| async move {
                let b = match store.get(p).await {
                    Ok(r) => r.bytes().await,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => Err(e),
                }
                .map_err(|e| self.fail("downloading", p, e))?;
                let ok = self
                    .unseal(p, b)
                    .is_ok_and(|plain| decode_object(&plain, h, None).is_ok());
                Ok::<_, RemoteError>(Some(ok))
            }))
            .buffered(self.concurrency)
            .try_collect()
            .await
        })
    }

    pub(crate) fn put(&self, p: &ObjPath, bytes: Vec<u8>) -> Result<()> {
        self.rt
            .block_on(self.store.put(p, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.fail("uploading", p, e))
    }

    /// Uploads every `(path, bytes)`, `concurrency` at a time; `done(bytes)` after each.
    pub(crate) fn put_many(
        &self,
        items: Vec<(ObjPath, Vec<u8>)>,
        done: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        let store = &*self.store;
        self.rt.block_on(async {
            futures::stream::iter(items.into_iter().map(|(p, b)| async move {
                let n = b.len() as u64;
                store
                    .put(&p, PutPayload::from(b))
                    .await
                    .map_err(|e| self.fail("uploading", &p, e))?;
                done(n);
                Ok::<_, RemoteError>(())
            }))
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await
        })?;
        Ok(())
    }

    /// The object's bytes, or `None` when it does not exist.
    pub(crate) fn get_opt(&self, p: &ObjPath) -> Result<Option<Bytes>> {
        self.rt
            .block_on(fetch_capped(&*self.store, p))
            .map_err(|f| self.fetch_failed(p, f))
    }

    /// The error for a failed [`fetch_capped`].
    pub(crate) fn fetch_failed(&self, p: &ObjPath, f: Fetch) -> RemoteError {
        match f {
            Fetch::Store(e) => self.fail("downloading", p, e),
            Fetch::TooLarge { size, cap } => RemoteError::Damaged(format!(
                "{} is {size} bytes, more than btm ever writes there ({cap}): not downloaded; \
                 the remote is damaged or was written by someone else",
                self.ctx("object", p)
            )),
        }
    }

    pub(crate) fn get(&self, p: &ObjPath) -> Result<Bytes> {
        self.get_opt(p)?.ok_or_else(|| {
            RemoteError::Missing(format!(
                "{} is missing: the offsite copy is incomplete or was pruned too eagerly; run \
                 `btm-agent push` from the source log again",
                self.ctx("object", p)
            ))
        })
    }

    /// Several objects at once, in order; None for one gone since it was listed (a push
    /// replacing a pointer, or a prune, may remove it meanwhile).
    /// (Used for pointers, which are mutable and so never cached.)
    pub(crate) fn get_many(&self, paths: &[ObjPath]) -> Result<Vec<Option<Bytes>>> {
        let store = &*self.store;
        let got: Vec<Option<Bytes>> = self.rt.block_on(async {
            futures::stream::iter(paths.iter().map(|p| async move {
                fetch_capped(store, p)
                    .await
                    .map_err(|f| self.fetch_failed(p, f))
            }))
            .buffered(self.concurrency)
            .try_collect()
            .await
        })?;
        Ok(got)
    }

    pub(crate) fn get_range(&self, p: &ObjPath, r: std::ops::Range<u64>) -> Result<Bytes> {
        self.rt
            .block_on(self.store.get_range(p, r))
            .map_err(|e| self.fail("downloading part of", p, e))
    }

    /// Every object under `prefix`: (path, size, last modified).
    pub(crate) fn list(
        &self,
        prefix: &ObjPath,
    ) -> Result<Vec<(ObjPath, u64, chrono::DateTime<chrono::Utc>)>> {
        self.rt
            .block_on(
                self.store
                    .list(Some(prefix))
                    .map_ok(|m| (m.location, m.size, m.last_modified))
                    .try_collect(),
            )
            .map_err(|e| self.fail("listing", prefix, e))
    }

    /// Height, record key and path of every pointer of volume `name` (`volumes/<name>/heights/`).
    pub(crate) fn pointers(&self, name: &str) -> Result<Vec<(u64, [u8; 32], ObjPath)>> {
        Ok(self
            .list(&layout::heights_dir(name))?
            .into_iter()
            .filter_map(|(p, _, _)| {
                let (h, k) = layout::parse_pointer_name(p.filename()?)?;
                Some((h, k, p))
            })
            .collect())
    }

    /// The immediate "directories" under `prefix`.
    pub(crate) fn list_dirs(&self, prefix: &ObjPath) -> Result<Vec<ObjPath>> {
        self.rt
            .block_on(self.store.list_with_delimiter(Some(prefix)))
            .map(|r| r.common_prefixes)
            .map_err(|e| self.fail("listing", prefix, e))
    }

    pub(crate) fn delete_many(&self, paths: Vec<ObjPath>) -> Result<()> {
        let store = &*self.store;
        self.rt.block_on(async {
            futures::stream::iter(paths.into_iter().map(|p| async move {
                match store.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.fail("deleting", &p, e)),
                }
            }))
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await
        })?;
        Ok(())
    }

    fn cache_file(&self, p: &ObjPath) -> Option<PathBuf> {
        self.cache.as_ref().map(|c| c.join(p.as_ref()))
    }

    /// Whether the cache holds `p` (without reading it).
    pub(crate) fn cache_has(&self, p: &ObjPath) -> bool {
        self.cache_file(p).is_some_and(|f| f.is_file())
    }

    /// A cached copy of an immutable object (the caller checks it like a download).
    pub(crate) fn cache_get(&self, p: &ObjPath) -> Option<Bytes> {
        std::fs::read(self.cache_file(p)?).ok().map(Bytes::from)
    }

    /// Keeps a checked immutable object in the cache (best effort: a full cache disk only
    /// costs downloads).
    pub(crate) fn cache_put(&self, p: &ObjPath, bytes: &[u8]) {
        let Some(f) = self.cache_file(p) else { return };
        let tmp = f.with_extension("tmp");
        let ok = f
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(&tmp, bytes))
            .and_then(|_| std::fs::rename(&tmp, &f));
        if let Err(e) = ok {
            tracing::debug!("not caching {p}: {e}");
        }
    }
}

/// Decodes a payload object and checks it against its name (and, when given, the raw length
/// the record says); the raw bytes, or why not.
pub(crate) fn decode_object(
    b: &[u8],
    hash: &[u8; 32],
    raw_len: Option<u64>,
) -> Result<Vec<u8>, String> {
    let r = layout::decode_object_header(b, hash, b.len() as u64)?;
    if let Some(want) = raw_len
        && want != r.raw_len
    {
        return Err(format!(
            "holds {} raw bytes, the record says {want}",
            r.raw_len
        ));
    }
    btm_log::decode_payload(&r, b[layout::OBJ_HEADER_LEN as usize..].to_vec())
}

/// Why [`fetch_capped`] returned no bytes.
pub(crate) enum Fetch {
    Store(object_store::Error),
    /// The store says the object is larger than btm ever writes at its path.
    TooLarge {
        size: u64,
        cap: u64,
    },
}

/// An object's bytes (`None`: it does not exist), refused before its body is read when the
/// store reports more bytes than [`layout::max_object_len`] allows at its path.
pub(crate) async fn fetch_capped(
    store: &dyn ObjectStore,
    p: &ObjPath,
) -> std::result::Result<Option<Bytes>, Fetch> {
    let r = match store.get(p).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(Fetch::Store(e)),
    };
    let cap = layout::max_object_len(p);
    if r.meta.size > cap {
        return Err(Fetch::TooLarge {
            size: r.meta.size,
            cap,
        });
    }
    r.bytes().await.map(Some).map_err(Fetch::Store)
}

async fn exists(store: &dyn ObjectStore, p: &ObjPath) -> object_store::Result<bool> {
    match store.head(p).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into())
}

/// The default volume name for a log: `<hostname>-<log dir name>`.
pub fn default_volume_name(log_dir: &std::path::Path) -> String {
    let base = log_dir
        .canonicalize()
        .unwrap_or_else(|_| log_dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "log".into());
    let raw = format!("{}-{base}", hostname());
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

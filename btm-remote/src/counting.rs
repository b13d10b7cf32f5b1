//! Request counts and bandwidth limits: every store a [`crate::Remote`] opens is wrapped so push
//! and restore can report how many requests of each kind they sent (what a bucket bills, and
//! what bounds a push on a distant store), and so uploads and downloads can be held to a rate
//! (`--limit-upload`, `--limit-download`). The wrapper counts, waits for its turn, and forwards
//! to the real client.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Requests sent, by kind. A listing counts once per call, however many pages it took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    pub put: u64,
    /// Whole or ranged downloads.
    pub get: u64,
    pub head: u64,
    pub list: u64,
    pub delete: u64,
}

impl RequestCounts {
    pub fn total(&self) -> u64 {
        self.put + self.get + self.head + self.list + self.delete
    }

    /// What was sent since `before`.
    pub fn since(&self, before: &RequestCounts) -> RequestCounts {
        RequestCounts {
            put: self.put - before.put,
            get: self.get - before.get,
            head: self.head - before.head,
            list: self.list - before.list,
            delete: self.delete - before.delete,
        }
    }
}

#[derive(Default, Debug)]
pub(crate) struct Counters {
    put: AtomicU64,
    get: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    pub(crate) up: Pacer,
    pub(crate) down: Pacer,
}

/// Holds transfers to a rate, averaged over requests: each request reserves a slot as long as
/// its bytes take at the rate, after the slots reserved before it, and starts when its slot
/// does (a download's size is known once its answer starts, so it waits before its body is
/// read). Requests in flight at once share the rate.
#[derive(Default, Debug)]
pub(crate) struct Pacer {
    /// Bytes per second; 0: no limit.
    pub(crate) rate: AtomicU64,
    next: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Pacer {
    async fn take(&self, bytes: u64) {
        let rate = self.rate.load(Relaxed);
        if rate == 0 || bytes == 0 {
            return;
        }
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            let start = next.map_or(now, |t| t.max(now));
            *next = Some(start + std::time::Duration::from_secs_f64(bytes as f64 / rate as f64));
            start - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            put: self.put.load(Relaxed),
            get: self.get.load(Relaxed),
            head: self.head.load(Relaxed),
            list: self.list.load(Relaxed),
            delete: self.delete.load(Relaxed),
        }
    }
}

/// The real store, counted.
#[derive(Debug)]
pub(crate) struct Counting {
    pub(crate) inner: Arc<dyn ObjectStore>,
    pub(crate) n: Arc<Counters>,
}

impl fmt::Display for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Counting {
    async fn put_opts(&self, p: &Path, payload: PutPayload, o: PutOptions) -> Result<PutResult> {
        self.n.put.fetch_add(1, Relaxed);
        self.n.up.take(payload.content_length() as u64).await;
        self.inner.put_opts(p, payload, o).await
    }

    async fn put_multipart_opts(
        &self,
        p: &Path,
        o: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.n.put.fetch_add(1, Relaxed);
        self.inner.put_multipart_opts(p, o).await
    }

    async fn get_opts(&self, p: &Path, o: GetOptions) -> Result<GetResult> {
        if o.head {
            self.n.head.fetch_add(1, Relaxed);
            return self.inner.get_opts(p, o).await;
        }
        self.n.get.fetch_add(1, Relaxed);
        let r = self.inner.get_opts(p, o).await?;
        self.n.down.take(r.range.end - r.range.start).await;
        Ok(r)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let n = self.n.clone();
        self.inner.delete_stream(
            locations
                .inspect(move |_| {
                    n.delete.fetch_add(1, Relaxed);
                })
                .boxed(),
        )
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.n.list.fetch_add(1, Relaxed);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.n.list.fetch_add(1, Relaxed);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.n.list.fetch_add(1, Relaxed);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, o: CopyOptions) -> Result<()> {
        self.n.put.fetch_add(1, Relaxed);
        self.inner.copy_opts(from, to, o).await
    }
}

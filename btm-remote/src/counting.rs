//! Request counts: every store a [`crate::Remote`] opens is wrapped so push and restore can
//! report how many requests of each kind they sent (what a bucket bills, and what bounds a push
//! on a distant store). The wrapper only counts and forwards to the real client.

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
        } else {
            self.n.get.fetch_add(1, Relaxed);
        }
        self.inner.get_opts(p, o).await
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

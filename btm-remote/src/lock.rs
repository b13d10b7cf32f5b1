//! Push and prune exclude each other through lock objects (`locks/<kind>-<id>.json`).
//!
//! Without it, a push that finds an old unreferenced object already there (and so does not
//! upload it) could link it just as a concurrent prune deletes it. Each side writes its own
//! lock first and only then looks for the other kind, so with a strongly consistent store (S3,
//! GCS, Azure, a local disk) at least one of two racing parties sees the other and backs off.
//! Pushes share (several nodes push at once); prune is alone. A lock is refreshed while its
//! holder works and is stale, and ignored, once it has not been refreshed for [`STALE`]
//! (a holder that crashed).

use std::time::{Duration, Instant};

use crate::error::{Result, fail};
use object_store::path::Path as ObjPath;

use super::{Remote, hostname, now_ms};

/// A lock not refreshed for this long belongs to a holder that is gone.
pub const STALE: Duration = Duration::from_secs(15 * 60);
/// How often a holder refreshes its lock.
const REFRESH: Duration = Duration::from_secs(60);

/// A held lock; released (deleted) when dropped.
pub struct Lock<'a> {
    remote: &'a Remote,
    path: ObjPath,
    body: Vec<u8>,
    refreshed: Instant,
}

impl<'a> Lock<'a> {
    /// Takes a `kind` lock ("push" or "prune"), or fails naming the other party's lock.
    pub fn take(remote: &'a Remote, kind: &str) -> Result<Lock<'a>> {
        let id = btm_log::hex(
            &blake3::hash(format!("{}{}{}", hostname(), std::process::id(), now_ms()).as_bytes())
                .as_bytes()[..8],
        );
        let path = ObjPath::from(format!("locks/{kind}-{id}.json"));
        let body = serde_json::to_vec(&serde_json::json!({
            "kind": kind,
            "host": hostname(),
            "pid": std::process::id(),
            "created_unix_ms": now_ms(),
        }))
        .expect("serializable");
        // Never read back (only its name and age count), but it names a host: sealed too.
        let body = remote.seal(&path, body);
        remote.put(&path, body.clone())?;
        let lock = Lock {
            remote,
            path,
            body,
            refreshed: Instant::now(),
        };
        let blocker = if kind == "prune" { "" } else { "prune-" };
        let now = chrono::Utc::now();
        let stale = chrono::Duration::from_std(STALE).expect("a few minutes");
        for (p, _, modified) in remote.list(&ObjPath::from("locks"))? {
            let Some(name) = p.filename() else { continue };
            if p == lock.path || now - modified > stale || !name.starts_with(blocker) {
                continue;
            }
            if kind == "prune" {
                fail!(
                    Locked,
                    "pushes are running on {} ({p}, refreshed {}): prune again once they are \
                     done (a lock older than {} min is ignored)",
                    remote.url(),
                    modified.to_rfc3339(),
                    STALE.as_secs() / 60
                );
            }
            fail!(
                Locked,
                "a prune is running on {} ({p}, refreshed {}): push again once it is done (the \
                 agent retries by itself; a lock older than {} min is ignored)",
                remote.url(),
                modified.to_rfc3339(),
                STALE.as_secs() / 60
            );
        }
        Ok(lock)
    }

    /// Rewrites the lock when it is due, so that others do not take it for stale.
    pub fn refresh(&mut self) -> Result<()> {
        if self.refreshed.elapsed() >= REFRESH {
            self.remote.put(&self.path, self.body.clone())?;
            self.refreshed = Instant::now();
        }
        Ok(())
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.remote.delete_many(vec![self.path.clone()]) {
            tracing::warn!("releasing {}: {e:#} (it goes stale by itself)", self.path);
        }
    }
}

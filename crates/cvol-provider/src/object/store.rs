//! Blocking access to an `object_store` for the provider's synchronous callers, with
//! errors that name the pool.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::Codec;
use super::layout::{is_wal, Manifest, WAL_TRAILER};
use crate::ProviderError;

/// The `store` of the error `Store::timed` makes.
const TIMEOUT_STORE: &str = "cvol-timeout";

/// An object store and the runtime its calls run on.
#[derive(Clone)]
pub(crate) struct Store {
    pub(crate) provider: String,
    pub(crate) location: String,
    pub(crate) inner: Arc<dyn ObjectStore>,
    pub(crate) runtime: Arc<tokio::runtime::Runtime>,
    /// How long one call may take, retries included, before it counts as failed.
    pub(crate) timeout: Duration,
    /// Chunks and log pieces kept on local disk across restarts, if the pool has one.
    pub(crate) disk_cache: Option<Arc<super::disk_cache::DiskCache>>,
    /// How objects are stored (as they are, or sealed); records (manifests, volume and
    /// attachment records) too, `pool.json` excepted.
    pub(crate) codec: Arc<Codec>,
}

/// The largest record a store holds: a manifest of a volume of many chunks.
const RECORD_LIMIT: usize = 256 << 20;

/// Bytes read from the end of a `.wal` for its manifest, which a small flush's fits in:
/// more are read only when the manifest says it is longer.
const WAL_TAIL: u64 = 64 << 10;

/// What a failed store call means to a caller.
#[derive(Debug)]
pub(crate) enum StoreError {
    /// The object is not there.
    NotFound,
    /// A create found the object there.
    Exists,
    /// A conditional update found the object changed since it was read.
    Changed,
    /// The store does not offer the operation (a conditional update, on a local
    /// directory).
    Unsupported,
    /// Anything else, said for people.
    Failed(String),
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => Self::NotFound,
            object_store::Error::AlreadyExists { .. } => Self::Exists,
            object_store::Error::Precondition { .. } => Self::Changed,
            object_store::Error::NotImplemented => Self::Unsupported,
            // Our own timeout (see `timed`), said without object_store's prefix.
            object_store::Error::Generic {
                store: TIMEOUT_STORE,
                source,
            } => Self::Failed(source.to_string()),
            other => Self::Failed(other.to_string()),
        }
    }
}

impl Store {
    /// Runs `future` to completion from a synchronous caller.
    pub(crate) fn block<T>(
        &self,
        future: impl std::future::Future<Output = Result<T, object_store::Error>> + Send,
    ) -> Result<T, StoreError>
    where
        T: Send,
    {
        // Callers may run inside another runtime (the provider service's blocking pool);
        // a scoped thread keeps this runtime's block_on out of theirs.
        let result = if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| s.spawn(|| self.runtime.block_on(future)).join())
                .expect("a store call does not panic")
        } else {
            self.runtime.block_on(future)
        };
        result.map_err(StoreError::from)
    }

    /// `call` (a store operation `op`: get, put, list, delete), failed if it takes
    /// longer than the pool's timeout. Every single call to the store goes through here,
    /// so that a store that went away fails it instead of hanging a flush (object_store
    /// retries within the same limit); its time and failure are recorded by `op`.
    pub(crate) fn timed<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = Result<T, object_store::Error>> + Send,
    ) -> impl std::future::Future<Output = Result<T, object_store::Error>> + Send {
        let limit = self.timeout;
        let provider = self.provider.clone();
        async move {
            let started = std::time::Instant::now();
            let result = tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                Err(object_store::Error::Generic {
                    store: "cvol",
                    source: format!("no answer within {} s", limit.as_secs()).into(),
                })
            });
            metrics::histogram!("cvol_object_store_request_seconds", "provider" => provider.clone(), "op" => op)
                .record(started.elapsed());
            if matches!(&result, Err(e) if !matches!(e, object_store::Error::NotFound { .. })) {
                metrics::counter!("cvol_object_store_errors_total", "provider" => provider, "op" => op)
                    .increment(1);
            }
            result
        }
    }

    /// The error of a store call on `path`.
    pub(crate) fn error(&self, op: &str, path: &Path, e: StoreError) -> ProviderError {
        let message = match e {
            StoreError::NotFound => "not found".to_string(),
            StoreError::Exists => "already exists".to_string(),
            StoreError::Changed => "changed meanwhile".to_string(),
            StoreError::Unsupported => "not supported by this store".to_string(),
            StoreError::Failed(m) => m,
        };
        ProviderError::Store {
            provider: self.provider.clone(),
            location: self.location.clone(),
            message: format!("{op} {path}: {message}"),
        }
    }

    pub(crate) fn get(&self, path: &Path) -> Result<Bytes, StoreError> {
        Ok(self.get_versioned(path)?.0)
    }

    /// The object at `path`, and its version for a conditional update of it.
    pub(crate) fn get_versioned(&self, path: &Path) -> Result<(Bytes, UpdateVersion), StoreError> {
        let store = &self.inner;
        self.block(self.timed("get", async move {
            let got = store.get(path).await?;
            let version = UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            Ok((got.bytes().await?, version))
        }))
    }

    /// Reads a JSON record; `None` if it is not there, `Corrupt` if it does not parse.
    pub(crate) fn get_json<T: DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, ProviderError> {
        match self.get(path) {
            Ok(bytes) => self.decode_json(path, &bytes).map(Some),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(self.error("read", path, e)),
        }
    }

    /// A JSON record read from `path`: opened with the codec, then parsed; `Corrupt`
    /// if either fails.
    pub(crate) fn decode_json<T: DeserializeOwned>(
        &self,
        path: &Path,
        bytes: &[u8],
    ) -> Result<T, ProviderError> {
        let corrupt = |message: String| ProviderError::Corrupt {
            provider: self.provider.clone(),
            path: format!("{}/{path}", self.location).into(),
            message,
        };
        let text = self
            .codec
            .open(path.as_ref(), bytes, RECORD_LIMIT)
            .map_err(|e| corrupt(e.to_string()))?;
        serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))
    }

    pub(crate) fn put(&self, path: &Path, bytes: Bytes, mode: PutMode) -> Result<(), StoreError> {
        let store = &self.inner;
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        self.block(self.timed("put", async move {
            store
                .put_opts(path, PutPayload::from_bytes(bytes), options)
                .await
                .map(|_| ())
        }))
    }

    pub(crate) fn put_json(
        &self,
        path: &Path,
        record: &impl Serialize,
        mode: PutMode,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).expect("records serialize");
        self.put(path, self.codec.seal(path.as_ref(), &bytes).into(), mode)
    }

    /// The last `n` bytes of the object at `path` (all of it if it is shorter).
    fn get_tail(&self, path: &Path, n: u64) -> Result<Bytes, StoreError> {
        let store = &self.inner;
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Suffix(n)),
            ..Default::default()
        };
        self.block(self.timed("get", async move {
            store.get_opts(path, options).await?.bytes().await
        }))
    }

    /// The manifest of a version object: `manifests/<gen>-<seq>.json`, or a flush's
    /// `logs/<vol>/<gen>-<seq>.wal` (whose manifest is read from its end); `None` if it
    /// is not there, `Corrupt` if it does not open or parse.
    pub(crate) fn get_manifest(&self, path: &Path) -> Result<Option<Manifest>, ProviderError> {
        if !is_wal(path) {
            return self.get_json(path);
        }
        let corrupt = |message: String| ProviderError::Corrupt {
            provider: self.provider.clone(),
            path: format!("{}/{path}", self.location).into(),
            message,
        };
        let mut want = WAL_TAIL;
        loop {
            let tail = match self.get_tail(path, want) {
                Ok(tail) => tail,
                Err(StoreError::NotFound) => return Ok(None),
                Err(e) => return Err(self.error("read", path, e)),
            };
            let Some(body) = tail.len().checked_sub(8) else {
                return Err(corrupt("shorter than its trailer".into()));
            };
            if &tail[body + 4..] != WAL_TRAILER {
                return Err(corrupt("no log trailer at its end".into()));
            }
            let len = u32::from_le_bytes(tail[body..body + 4].try_into().expect("4 bytes"));
            let len = len as usize;
            if len <= body {
                return self.decode_json(path, &tail[body - len..body]).map(Some);
            }
            if (tail.len() as u64) < want || len > RECORD_LIMIT {
                return Err(corrupt(format!(
                    "names a manifest of {len} bytes, not there"
                )));
            }
            want = len as u64 + 8;
        }
    }

    /// A `.wal` object at `path`: the log's records `log`, then `manifest`, sealed as a
    /// record, then the trailer.
    pub(crate) fn wal_bytes(&self, path: &Path, log: &[u8], manifest: &Manifest) -> Bytes {
        let json = serde_json::to_vec(manifest).expect("records serialize");
        let sealed = self.codec.seal(path.as_ref(), &json);
        let mut bytes = Vec::with_capacity(log.len() + sealed.len() + 8);
        bytes.extend_from_slice(log);
        bytes.extend_from_slice(&sealed);
        bytes.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        bytes.extend_from_slice(WAL_TRAILER);
        bytes.into()
    }

    /// Every object below `prefix`.
    pub(crate) fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>, ProviderError> {
        let store = &self.inner;
        self.block(self.timed("list", async move {
            store.list(Some(prefix)).try_collect().await
        }))
        .map_err(|e| self.error("list", prefix, e))
    }

    /// The names of the "directories" right below `prefix`.
    pub(crate) fn list_dirs(&self, prefix: &Path) -> Result<Vec<String>, ProviderError> {
        let store = &self.inner;
        let listing = self
            .block(self.timed("list", async move {
                store.list_with_delimiter(Some(prefix)).await
            }))
            .map_err(|e| self.error("list", prefix, e))?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// Deletes `path`; gone already is fine.
    pub(crate) fn delete(&self, path: &Path) -> Result<(), ProviderError> {
        let store = &self.inner;
        match self.block(self.timed("delete", async move { store.delete(path).await })) {
            Ok(()) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(self.error("delete", path, e)),
        }
    }
}

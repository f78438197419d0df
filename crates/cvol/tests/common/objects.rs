//! An object pool's objects read directly with `object_store`, not through cvol: what
//! tests check a pool's contents with.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStore;

/// The objects of the pool at a `file:///DIR` or `s3://BUCKET/PREFIX` URL.
pub struct PoolObjects {
    store: Arc<dyn ObjectStore>,
    root: Path,
    runtime: tokio::runtime::Runtime,
}

impl PoolObjects {
    /// Opens the pool at `url`; `vars` is the AWS environment for `s3://` URLs.
    pub fn open(url: &str, vars: &[(String, String)]) -> Self {
        let var = |name: &str| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{name} is not set for {url}"))
        };
        let (store, root): (Arc<dyn ObjectStore>, Path) =
            if let Some(dir) = url.strip_prefix("file://") {
                std::fs::create_dir_all(dir).unwrap();
                let store = object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap();
                (Arc::new(store), Path::default())
            } else {
                let rest = url.strip_prefix("s3://").expect("file:// or s3:// URL");
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let store = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_endpoint(var("AWS_ENDPOINT_URL"))
                    .with_allow_http(true)
                    .with_region(var("AWS_REGION"))
                    .with_access_key_id(var("AWS_ACCESS_KEY_ID"))
                    .with_secret_access_key(var("AWS_SECRET_ACCESS_KEY"))
                    .build()
                    .unwrap();
                (Arc::new(store), Path::from(prefix))
            };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Self {
            store,
            root,
            runtime,
        }
    }

    fn path(&self, key: &str) -> Path {
        key.split('/')
            .fold(self.root.clone(), |path, part| path.child(part))
    }

    /// The object `key` (relative to the pool), if it is there.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let path = self.path(key);
        self.runtime.block_on(async {
            match self.store.get(&path).await {
                Ok(got) => Some(got.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("get {path}: {e}"),
            }
        })
    }

    /// The keys (relative to the pool) of every object below `prefix`, sorted.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let path = self.path(prefix);
        let root = self.root.as_ref().len();
        let mut keys: Vec<String> = self
            .runtime
            .block_on(self.store.list(Some(&path)).try_collect::<Vec<_>>())
            .unwrap()
            .into_iter()
            .map(|m| {
                let full = m.location.as_ref();
                full[root..].trim_start_matches('/').to_string()
            })
            .collect();
        keys.sort();
        keys
    }

    /// How many volumes the pool has (volumes with a `volume.json`).
    pub fn volumes(&self) -> usize {
        self.list("volumes")
            .iter()
            .filter(|k| k.ends_with("/volume.json"))
            .count()
    }

    /// The object of key `key` as a manifest names it: a flush's `.wal` in `logs/`, a
    /// chunk or log in `chunks/`.
    fn object(&self, key: &str) -> Option<Vec<u8>> {
        let top = if key.ends_with(".wal") {
            "logs"
        } else {
            "chunks"
        };
        self.get(&format!("{top}/{key}"))
    }

    /// The manifest in version object `key`: a JSON manifest, or the one at the end of a
    /// `.wal` (its length and `cvw1` last).
    fn manifest(&self, key: &str) -> serde_json::Value {
        let bytes = self.get(key).unwrap();
        let json = if key.ends_with(".wal") {
            let end = bytes.len() - 8;
            assert_eq!(&bytes[end + 4..], b"cvw1", "{key}");
            let len = u32::from_le_bytes(bytes[end..end + 4].try_into().unwrap()) as usize;
            &bytes[end - len..end]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(json).unwrap()
    }

    /// The bytes of `volume` as its newest manifest says, assembled from its chunks and
    /// the patches over them (a pool that stores objects as they are).
    pub fn volume_bytes(&self, volume: &str) -> Vec<u8> {
        // The newest version (a manifest, or a flush's `.wal`), and back to the whole
        // one its deltas build on. Both are named `<gen>-<seq>`, zero-padded.
        let mut names = self.list(&format!("volumes/{volume}/manifests"));
        names.extend(self.list(&format!("logs/{volume}")));
        let file = |key: &String| key.rsplit('/').next().unwrap().to_string();
        names.sort_by_key(file);
        let mut chain = Vec::new();
        while let Some(name) = names.pop() {
            let manifest = self.manifest(&name);
            let whole = manifest.get("base").is_none();
            chain.push(manifest);
            if whole {
                break;
            }
        }
        let newest = chain.first().expect("the volume has a manifest");
        let chunk_size = newest["chunk_size"].as_u64().unwrap() as usize;
        let size = newest["size"].as_u64().unwrap() as usize;
        let end = size.div_ceil(chunk_size) * chunk_size;
        let mut bytes = vec![0u8; end];
        // Applied oldest first: emptied chunks, chunks written whole, patches.
        while let Some(manifest) = chain.pop() {
            let indexes = |field: &str| -> Vec<(usize, serde_json::Value)> {
                manifest
                    .get(field)
                    .and_then(|m| m.as_object())
                    .map(|m| {
                        m.iter()
                            .map(|(i, v)| (i.parse::<usize>().unwrap() * chunk_size, v.clone()))
                            .filter(|(at, _)| *at < end)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            for hole in manifest
                .get("holes")
                .and_then(|h| h.as_array())
                .into_iter()
                .flatten()
            {
                let at = hole.as_u64().unwrap() as usize * chunk_size;
                if at < end {
                    bytes[at..at + chunk_size].fill(0);
                }
            }
            for (at, key) in indexes("chunks") {
                let chunk = self
                    .object(key.as_str().unwrap())
                    .expect("a chunk the manifest names");
                bytes[at..at + chunk_size].copy_from_slice(&chunk);
            }
            for (chunk_at, list) in indexes("patches") {
                for p in list.as_array().unwrap() {
                    let field = |name: &str| p[name].as_u64().unwrap() as usize;
                    let log = self
                        .object(p["log"].as_str().unwrap())
                        .expect("a log the manifest names");
                    let (at, len, from) = (chunk_at + field("at"), field("len"), field("from"));
                    bytes[at..at + len].copy_from_slice(&log[from..from + len]);
                }
            }
        }
        bytes.truncate(size);
        bytes
    }
}

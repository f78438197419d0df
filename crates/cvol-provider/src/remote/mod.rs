//! The `remote` provider: a pool managed by a provider service (`cvol provider serve`),
//! reached over its HTTP API.
//!
//! Every call is retried across connection failures and timeouts until the provider's
//! `timeout` has passed, so a service restart is ridden out. A call repeated after an
//! attempt whose answer was lost may find its own work done: a create answered "exists"
//! or a delete answered "not found" then counts as done, the way an NFS client treats a
//! replayed non-idempotent call. Volume ids (chosen by callers) and snapshot names are
//! the creates' idempotency keys.

pub mod api;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cvol_format::{ProviderId, SnapshotName, VolumeId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use ureq::http::{Method, Request};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use crate::file::FileBlockDevice;
use crate::object::ObjectSettings;
use crate::rbd::CephClient;
use crate::standby::StandbyDevice;
use crate::{
    Attachment, BlockDevice, CopyProgress, DataAccess, ObjectProvider, Provider, ProviderError,
    Snapshot, Volume, VolumeSource,
};
use api::{
    AttachmentBody, CreateAttachment, CreateSnapshot, CreateVolume, ErrorBody, Leftovers, Reclaim,
    ResizeVolume, RevertVolume, SnapshotBody, SnapshotList, Source, VolumeBody, VolumePage,
};

/// How long a call is retried by default before the service counts as unreachable.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one attempt of a call that copies data (create, snapshot) may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(3600);

/// The TLS files of a client of an `https://` service: the CA its certificate must chain
/// to (instead of the public web roots), and this client's own certificate and key for
/// a service that asks for one (mutual TLS).
#[derive(Debug, Default, Clone)]
pub struct TlsFiles {
    /// PEM certificates to trust.
    pub ca: Option<PathBuf>,
    /// PEM certificate chain of this client.
    pub cert: Option<PathBuf>,
    /// PEM private key of this client (a secret file: not readable by every user).
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// ureq's TLS settings for these files.
    fn config(&self) -> Result<TlsConfig, String> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let certificates = |path: &Path| -> Result<Vec<Certificate<'static>>, String> {
            let pem = read(path)?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(format!("{}: {e}", path.display()))),
                })
                .collect::<Result<_, _>>()?;
            if certs.is_empty() {
                return Err(format!("{}: no PEM certificate in it", path.display()));
            }
            Ok(certs)
        };
        let mut builder = TlsConfig::builder();
        if let Some(ca) = &self.ca {
            builder = builder.root_certs(RootCerts::new_with_certs(&certificates(ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let pem = crate::read_secret(key)
                    .map_err(|e| format!("key file {}: {e}", key.display()))?;
                let key = PrivateKey::from_pem(&pem)
                    .map_err(|e| format!("key file {}: {e}", key.display()))?;
                builder = builder
                    .client_cert(Some(ClientCert::new_with_certs(&certificates(cert)?, key)));
            }
            (None, None) => {}
            _ => return Err("cert_file and key_file go together".to_string()),
        }
        Ok(builder.build())
    }
}

/// Volumes asked for per page when listing.
const PAGE: usize = 1000;

/// A pool behind a provider service.
pub struct RemoteProvider {
    id: ProviderId,
    url: String,
    token: Option<String>,
    timeout: Duration,
    agent: ureq::Agent,
    /// The object pools attachments named, opened once per process and URL.
    object_pools: Mutex<HashMap<String, Arc<ObjectProvider>>>,
    /// This host's own Ceph client, for volumes of an `rbd` pool.
    ceph: CephClient,
}

impl std::fmt::Debug for RemoteProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("RemoteProvider")
            .field("id", &self.id)
            .field("url", &self.url)
            .finish()
    }
}

/// An answer, and whether an earlier attempt of the same call went unanswered.
struct Answer {
    status: u16,
    body: Vec<u8>,
    repeated: bool,
}

impl RemoteProvider {
    /// The provider `id` of the service at `url` (`http://HOST:PORT`), sending `token`
    /// as a bearer token and retrying each call for up to `timeout`.
    /// `POST /volumes/{id}/attachments`: an owner (taken over with `force`) or a standby.
    fn attach_as(
        &self,
        id: &VolumeId,
        host: &str,
        force: bool,
        standby: bool,
    ) -> Result<Attachment, ProviderError> {
        let request = CreateAttachment {
            host_id: host.to_string(),
            force,
            standby,
        };
        let answer = self.call(
            Method::POST,
            &format!("/volumes/{id}/attachments"),
            Some(&request),
            self.timeout,
        )?;
        let body: AttachmentBody = self.accepted(&answer, id.as_str())?;
        if body.volume != id.as_str() || body.host_id != host {
            return Err(self.service(format!(
                "asked to attach {id} to {host:?}, answered with {} on {:?}",
                body.volume, body.host_id
            )));
        }
        let opened = self.open_access(&body.access, id, host, body.generation, standby);
        let mut device = match opened {
            Ok(device) => device,
            // The service holds the volume for this host now: a host that cannot reach
            // its bytes gives it back, unless another attachment has it already.
            Err(e) => {
                if !standby && !matches!(e, ProviderError::AttachedElsewhere { .. }) {
                    if let Err(undo) = Provider::detach(self, id, host) {
                        tracing::warn!(provider = %self.id, volume = %id, "could not detach after a failed attach: {undo}");
                    }
                }
                return Err(e);
            }
        };
        if standby {
            device = StandbyDevice::wrap(device);
        }
        Ok(Attachment {
            volume: id.clone(),
            host: host.to_string(),
            generation: body.generation,
            access: body.access,
            device,
        })
    }

    /// The device of attachment `generation` of `volume`, reached as `access` says. Its
    /// writes and flushes fail once the volume is attached with a newer generation.
    fn open_access(
        &self,
        access: &DataAccess,
        volume: &VolumeId,
        host: &str,
        generation: u64,
        standby: bool,
    ) -> Result<Arc<dyn BlockDevice>, ProviderError> {
        match access {
            DataAccess::File { data, fence } => {
                let device =
                    FileBlockDevice::open(data, fence, generation, false).map_err(|source| {
                        ProviderError::Io {
                            provider: self.id.to_string(),
                            op: "open",
                            path: data.clone(),
                            source,
                        }
                    })?;
                Ok(Arc::new(device))
            }
            DataAccess::Object { url } => {
                let pool = {
                    let mut pools = self.object_pools.lock().expect("object pools lock");
                    match pools.get(url) {
                        Some(pool) => pool.clone(),
                        None => {
                            // The service made the pool: one that is not there is a
                            // wrong URL or missing credentials here, not a pool to make.
                            let settings = ObjectSettings {
                                timeout: self.timeout,
                                create: false,
                                ..Default::default()
                            };
                            let pool = Arc::new(ObjectProvider::open(&self.id, url, &settings)?);
                            pools.insert(url.clone(), pool.clone());
                            pool
                        }
                    }
                };
                Ok(pool.device(volume, generation)?)
            }
            DataAccess::Rbd { pool, image } => {
                if image != volume.as_str() {
                    return Err(self.service(format!(
                        "asked to attach {volume}, answered with image {image}"
                    )));
                }
                crate::rbd::open_attached(
                    &self.id, &self.ceph, pool, volume, host, generation, standby,
                )
            }
        }
    }

    pub fn new(
        id: &ProviderId,
        url: &str,
        token: Option<String>,
        timeout: Duration,
        tls: &TlsFiles,
    ) -> Result<Self, ProviderError> {
        let url = url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ProviderError::Setting {
                provider: id.to_string(),
                message: format!("url {url:?}: expected http://HOST:PORT or https://HOST:PORT"),
            });
        }
        let setting = |message: String| ProviderError::Setting {
            provider: id.to_string(),
            message,
        };
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout));
        if tls.is_set() {
            if !url.starts_with("https://") {
                return Err(setting(format!(
                    "url {url:?}: TLS files are set, so the url must be https://"
                )));
            }
            config = config.tls_config(tls.config().map_err(setting)?);
        }
        let agent = config.build().new_agent();
        Ok(Self {
            id: id.clone(),
            url,
            token,
            timeout,
            agent,
            object_pools: Mutex::new(HashMap::new()),
            ceph: CephClient {
                conf: None,
                client: "admin".into(),
                keyring: None,
                timeout,
            },
        })
    }

    /// Reaches the volumes of a service's `rbd` pool with `ceph` (by default: librados'
    /// search for `ceph.conf`, as `client.admin`).
    pub fn with_ceph(mut self, ceph: CephClient) -> Self {
        self.ceph = ceph;
        self
    }

    /// Sends one call, retrying until it is answered or the timeout has passed.
    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        attempt_timeout: Duration,
    ) -> Result<Answer, ProviderError> {
        let url = format!("{}{}{path}", self.url, api::PREFIX);
        let body = body.map(|b| serde_json::to_vec(b).expect("requests serialize"));
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(50);
        let mut repeated = false;
        loop {
            let mut request = Request::builder().method(method.clone()).uri(&url);
            if let Some(token) = &self.token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            if body.is_some() {
                request = request.header("content-type", "application/json");
            }
            let request = request
                .body(body.clone().unwrap_or_default())
                .map_err(|e| self.service(format!("bad request {method} {path}: {e}")))?;
            let request = self
                .agent
                .configure_request(request)
                .timeout_global(Some(attempt_timeout))
                .build();
            let failure = match self.agent.run(request) {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    match response.body_mut().read_to_vec() {
                        Ok(body) => {
                            return Ok(Answer {
                                status,
                                body,
                                repeated,
                            })
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            if !retryable(&failure) {
                return Err(self.service(format!("{method} {path}: {failure}")));
            }
            if Instant::now() + pause > deadline {
                return Err(ProviderError::Unreachable {
                    provider: self.id.to_string(),
                    url: self.url.clone(),
                    message: format!(
                        "{method} {path}: {failure} (retried for {} s)",
                        self.timeout.as_secs()
                    ),
                });
            }
            tracing::debug!(provider = %self.id, "{method} {path}: {failure}; retrying");
            repeated = true;
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    fn service(&self, message: String) -> ProviderError {
        ProviderError::Service {
            provider: self.id.to_string(),
            url: self.url.clone(),
            message,
        }
    }

    /// The body of a successful answer.
    fn decode<T: DeserializeOwned>(&self, answer: &Answer) -> Result<T, ProviderError> {
        serde_json::from_slice(&answer.body)
            .map_err(|e| self.service(format!("unreadable answer: {e}")))
    }

    /// The body of an answer that must be a success, or the error it means.
    fn accepted<T: DeserializeOwned>(
        &self,
        answer: &Answer,
        volume: &str,
    ) -> Result<T, ProviderError> {
        if !success(answer) {
            return Err(self.error(answer, volume, None));
        }
        self.decode(answer)
    }

    /// The error an unsuccessful answer about `volume` (and `snapshot`) means.
    fn error(&self, answer: &Answer, volume: &str, snapshot: Option<&str>) -> ProviderError {
        let Ok(body) = serde_json::from_slice::<ErrorBody>(&answer.body) else {
            let text = String::from_utf8_lossy(&answer.body);
            return self.service(format!("HTTP {}: {}", answer.status, text.trim()));
        };
        let provider = self.id.to_string();
        // What the service names wins: a copy's error may be about its source.
        let volume = body.volume.unwrap_or_else(|| volume.to_string());
        let snapshot = body
            .snapshot
            .unwrap_or_else(|| snapshot.unwrap_or_default().to_string());
        match body.error.as_str() {
            "volume_not_found" => ProviderError::VolumeNotFound { provider, volume },
            "volume_exists" => ProviderError::VolumeExists { provider, volume },
            "snapshot_not_found" => ProviderError::SnapshotNotFound {
                provider,
                volume,
                snapshot,
            },
            "snapshot_exists" => ProviderError::SnapshotExists {
                provider,
                volume,
                snapshot,
            },
            "attached_elsewhere" => ProviderError::AttachedElsewhere {
                provider,
                volume,
                holder: body.holder.unwrap_or_default(),
            },
            _ => self.service(format!("HTTP {}: {}", answer.status, body.message)),
        }
    }

    /// `GET /volumes/{id}`, as the service says it.
    fn volume_body(&self, id: &VolumeId) -> Result<VolumeBody, ProviderError> {
        let answer = self.call(
            Method::GET,
            &format!("/volumes/{id}"),
            NO_BODY,
            self.timeout,
        )?;
        self.accepted(&answer, id.as_str())
    }

    fn volume_from(&self, body: VolumeBody) -> Result<Volume, ProviderError> {
        Ok(Volume {
            id: VolumeId::new(&body.id)
                .map_err(|e| self.service(format!("answer names a bad volume: {e}")))?,
            size: body.size,
            owner: body.owner,
            created: from_unix_ms(body.created_unix_ms),
            attached_to: body.attached_to,
        })
    }

    fn snapshot_from(&self, body: SnapshotBody) -> Result<Snapshot, ProviderError> {
        Ok(Snapshot {
            name: SnapshotName::new(&body.name)
                .map_err(|e| self.service(format!("answer names a bad snapshot: {e}")))?,
            size: body.size,
            created: from_unix_ms(body.created_unix_ms),
        })
    }
}

fn retryable(e: &ureq::Error) -> bool {
    match e {
        // A TLS failure (a certificate not trusted or expired, a refused client
        // certificate) comes as invalid data; trying again changes nothing.
        ureq::Error::Io(e) => e.kind() != std::io::ErrorKind::InvalidData,
        ureq::Error::Timeout(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Protocol(_)
        | ureq::Error::BodyStalled => true,
        _ => false,
    }
}

/// `text` as one URL path segment.
fn segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

fn success(answer: &Answer) -> bool {
    (200..300).contains(&answer.status)
}

const NO_BODY: Option<&()> = None;

impl Provider for RemoteProvider {
    fn location(&self) -> String {
        format!("remote:{}", self.url)
    }

    fn create_volume(
        &self,
        id: &VolumeId,
        source: &VolumeSource,
        owner: &str,
        _progress: &dyn CopyProgress,
    ) -> Result<Volume, ProviderError> {
        let (size, source) = match source {
            VolumeSource::Blank { size } => (Some(*size), None),
            VolumeSource::Volume(v) => (
                None,
                Some(Source {
                    volume: v.to_string(),
                    snapshot: None,
                }),
            ),
            VolumeSource::Snapshot(v, s) => (
                None,
                Some(Source {
                    volume: v.to_string(),
                    snapshot: Some(s.to_string()),
                }),
            ),
        };
        let request = CreateVolume {
            id: id.to_string(),
            owner: owner.to_string(),
            size,
            source,
        };
        let answer = self.call(Method::POST, "/volumes", Some(&request), COPY_TIMEOUT)?;
        if success(&answer) {
            return self.volume_from(self.decode(&answer)?);
        }
        let error = self.error(&answer, id.as_str(), None);
        if answer.repeated && matches!(error, ProviderError::VolumeExists { .. }) {
            // Made by the attempt whose answer was lost, if it is ours.
            let volume = self.volume(id)?;
            if volume.owner == owner {
                return Ok(volume);
            }
        }
        Err(error)
    }

    fn volume(&self, id: &VolumeId) -> Result<Volume, ProviderError> {
        self.volume_from(self.volume_body(id)?)
    }

    fn allocated(&self, id: &VolumeId) -> Result<Option<u64>, ProviderError> {
        // An object volume attached here: its device knows better than the service.
        let pools = self.object_pools.lock().expect("object pools lock");
        if let Some(bytes) = pools.values().find_map(|pool| pool.attached_bytes(id)) {
            return Ok(Some(bytes));
        }
        drop(pools);
        Ok(self.volume_body(id)?.allocated)
    }

    fn list_volumes(&self) -> Result<Vec<Volume>, ProviderError> {
        let mut volumes = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(after) => format!("/volumes?limit={PAGE}&after={after}"),
                None => format!("/volumes?limit={PAGE}"),
            };
            let answer = self.call(Method::GET, &path, NO_BODY, self.timeout)?;
            let page: VolumePage = self.accepted(&answer, "")?;
            for body in page.volumes {
                volumes.push(self.volume_from(body)?);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        crate::sort_volumes(&mut volumes);
        Ok(volumes)
    }

    fn resize_volume(
        &self,
        id: &VolumeId,
        size: u64,
        allow_shrink: bool,
    ) -> Result<Volume, ProviderError> {
        let request = ResizeVolume { size, allow_shrink };
        let answer = self.call(
            Method::PATCH,
            &format!("/volumes/{id}"),
            Some(&request),
            self.timeout,
        )?;
        self.volume_from(self.accepted(&answer, id.as_str())?)
    }

    fn delete_volume(&self, id: &VolumeId) -> Result<(), ProviderError> {
        let answer = self.call(
            Method::DELETE,
            &format!("/volumes/{id}"),
            NO_BODY,
            self.timeout,
        )?;
        if success(&answer) {
            return Ok(());
        }
        match self.error(&answer, id.as_str(), None) {
            // Deleted by the attempt whose answer was lost.
            e if answer.repeated && e.is_not_found() => Ok(()),
            e => Err(e),
        }
    }

    fn create_snapshot(
        &self,
        id: &VolumeId,
        name: &SnapshotName,
        _progress: &dyn CopyProgress,
    ) -> Result<Snapshot, ProviderError> {
        let request = CreateSnapshot {
            name: name.to_string(),
        };
        let answer = self.call(
            Method::POST,
            &format!("/volumes/{id}/snapshots"),
            Some(&request),
            COPY_TIMEOUT,
        )?;
        if success(&answer) {
            return self.snapshot_from(self.decode(&answer)?);
        }
        let error = self.error(&answer, id.as_str(), Some(name.as_str()));
        if answer.repeated && matches!(error, ProviderError::SnapshotExists { .. }) {
            if let Some(made) = self
                .list_snapshots(id)?
                .into_iter()
                .find(|s| &s.name == name)
            {
                return Ok(made);
            }
        }
        Err(error)
    }

    fn list_snapshots(&self, id: &VolumeId) -> Result<Vec<Snapshot>, ProviderError> {
        let answer = self.call(
            Method::GET,
            &format!("/volumes/{id}/snapshots"),
            NO_BODY,
            self.timeout,
        )?;
        let list: SnapshotList = self.accepted(&answer, id.as_str())?;
        list.snapshots
            .into_iter()
            .map(|s| self.snapshot_from(s))
            .collect()
    }

    fn delete_snapshot(&self, id: &VolumeId, name: &SnapshotName) -> Result<(), ProviderError> {
        let answer = self.call(
            Method::DELETE,
            &format!("/volumes/{id}/snapshots/{name}"),
            NO_BODY,
            self.timeout,
        )?;
        if success(&answer) {
            return Ok(());
        }
        match self.error(&answer, id.as_str(), Some(name.as_str())) {
            e if answer.repeated && matches!(e, ProviderError::SnapshotNotFound { .. }) => Ok(()),
            e => Err(e),
        }
    }

    fn revert_volume(
        &self,
        id: &VolumeId,
        name: &SnapshotName,
        _progress: &dyn CopyProgress,
    ) -> Result<Volume, ProviderError> {
        let request = RevertVolume {
            snapshot: name.to_string(),
        };
        // Repeating a revert changes nothing, so a replayed call needs no special case.
        let answer = self.call(
            Method::POST,
            &format!("/volumes/{id}/revert"),
            Some(&request),
            COPY_TIMEOUT,
        )?;
        if success(&answer) {
            return self.volume_from(self.decode(&answer)?);
        }
        Err(self.error(&answer, id.as_str(), Some(name.as_str())))
    }

    fn attach(&self, id: &VolumeId, host: &str, force: bool) -> Result<Attachment, ProviderError> {
        self.attach_as(id, host, force, false)
    }

    fn attach_standby(&self, id: &VolumeId, host: &str) -> Result<Attachment, ProviderError> {
        self.attach_as(id, host, false, true)
    }

    fn detach(&self, id: &VolumeId, host: &str) -> Result<(), ProviderError> {
        let answer = self.call(
            Method::DELETE,
            &format!("/volumes/{id}/attachments/{}", segment(host)),
            NO_BODY,
            self.timeout,
        )?;
        if !success(&answer) {
            return Err(self.error(&answer, id.as_str(), None));
        }
        Ok(())
    }

    fn reclaim_interrupted(&self, apply: bool) -> Result<Vec<String>, ProviderError> {
        let answer = self.call(
            Method::POST,
            "/reclaim",
            Some(&Reclaim { apply }),
            COPY_TIMEOUT,
        )?;
        Ok(self.accepted::<Leftovers>(&answer, "")?.leftovers)
    }
}

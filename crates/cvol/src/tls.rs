//! TLS for cvol's HTTP servers (the provider service, the host agent's peer API) and for
//! the agent's calls to its peers: rustls with ring, certificates and keys in PEM files.
//! A server given a client CA asks every client for a certificate that chains to it
//! (mutual TLS), which is how hosts prove who they are.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// How long a stopping server lets calls in progress finish.
const GRACE: Duration = Duration::from_secs(5);

fn crypto() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no PEM certificate in it", path.display());
    }
    Ok(certs)
}

fn private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem =
        cvol_provider::read_secret(path).with_context(|| format!("key file {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("key file {}: no PEM private key in it", path.display()))
}

/// The NBD server's pre-shared keys, from a keys file that must not be world-readable.
#[cfg(feature = "tls-psk")]
pub fn nbd_psk(path: &Path) -> anyhow::Result<cvol_nbd::TlsCredentials> {
    let text = cvol_provider::read_secret(path)
        .with_context(|| format!("NBD keys file {}", path.display()))?;
    let text = String::from_utf8(text)
        .map_err(|_| anyhow::anyhow!("NBD keys file {}: not text", path.display()))?;
    let keys = cvol_nbd::psk::PskKeys::from_file_text(&text)
        .with_context(|| format!("NBD keys file {}", path.display()))?;
    Ok(cvol_nbd::TlsCredentials::Psk(Arc::new(keys)))
}

/// Without the `tls-psk` feature: what to build instead.
#[cfg(not(feature = "tls-psk"))]
pub fn nbd_psk(_: &Path) -> anyhow::Result<cvol_nbd::TlsCredentials> {
    bail!(
        "this cvol was built without TLS-PSK (rustls has none; it links OpenSSL): build it \
         with `cargo build --release --features tls-psk` (Debian: apt-get install libssl-dev \
         pkg-config), or use --nbd-tls-cert and --nbd-tls-key"
    )
}

fn roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{}: not a CA certificate", path.display()))?;
    }
    Ok(roots)
}

/// A server's TLS settings: its certificate chain and key, and, for mutual TLS, the CA
/// every client's certificate must chain to.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), crypto())
                .build()
                .context("client certificate verifier")?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .with_context(|| {
            format!(
                "{} and {} do not make a server identity",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A server's TLS settings when it is given a certificate and key (clap makes sure
/// neither comes alone); `None` serves plain.
pub fn optional_server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    client_ca: Option<&Path>,
) -> anyhow::Result<Option<Arc<ServerConfig>>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(server_config(cert, key, client_ca)?)),
        _ => Ok(None),
    }
}

/// A client's TLS settings: the CA servers' certificates must chain to, and this
/// client's own certificate and key for servers that ask for one.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots(ca)?);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .with_context(|| {
                format!(
                    "{} and {} do not make a client identity",
                    cert.display(),
                    key.display()
                )
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Refuses plain HTTP where it crosses a network: a server off loopback needs TLS, or
/// `insecure` (then it warns: bearer tokens cross the wire in clear text).
pub fn check_plain(
    listen: SocketAddr,
    tls: bool,
    insecure: bool,
    what: &str,
) -> anyhow::Result<()> {
    if tls || listen.ip().is_loopback() {
        return Ok(());
    }
    if !insecure {
        bail!(
            "refusing to serve {what} on {listen} without TLS: bearer tokens would cross the network in clear text; \
             give --tls-cert and --tls-key, or --insecure on a network you trust"
        );
    }
    tracing::warn!("serving {what} on {listen} over plain HTTP (--insecure): anyone on the path sees its tokens");
    Ok(())
}

/// Serves `app` on `listener`, over TLS when given a configuration, until `shutdown`
/// completes; calls in progress then get a few seconds to finish.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Option<Arc<ServerConfig>>,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(GRACE));
    });
    let service = app.into_make_service();
    match tls {
        Some(config) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(config);
            axum_server::from_tcp_rustls(listener, config)?
                .handle(handle)
                .serve(service)
                .await
        }
        None => {
            axum_server::from_tcp(listener)?
                .handle(handle)
                .serve(service)
                .await
        }
    }
}

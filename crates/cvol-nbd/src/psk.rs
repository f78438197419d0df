//! TLS with pre-shared keys (TLS-PSK) for NBD, as qemu-nbd's `tls-creds-psk` and
//! nbdkit's `--tls-psk` offer it: clients and server share a key per identity instead of
//! certificates, read from a keys file in psktool's format (`identity:hexkey` a line),
//! the file QEMU's `tls-creds-psk` (`keys.psk`) and libnbd's `tls-psk-file` read.
//!
//! rustls, which serves every other TLS of cvol, implements no TLS-PSK, so these
//! connections go through OpenSSL; that is why this module is behind the `tls-psk`
//! feature (it links the system's libssl). TLS 1.3 with the PSK and an ECDHE exchange is
//! what GnuTLS clients (QEMU, libnbd) negotiate; TLS 1.2 PSK suites are accepted too.

use std::collections::HashMap;
use std::pin::Pin;

use openssl::ssl::{Ssl, SslAcceptor, SslContextBuilder, SslMethod, SslVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_openssl::SslStream;

/// Why a keys file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PskError {
    /// A line is not `identity:hexkey` (the key itself is never repeated).
    #[error("line {line}: {why} (expected identity:hexkey, as psktool writes)")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No key at all.
    #[error("no keys in the file")]
    Empty,
    /// OpenSSL refused the settings.
    #[error("TLS-PSK setup: {0}")]
    Tls(#[from] openssl::error::ErrorStack),
}

/// The keys a server accepts, by identity, ready to accept connections.
pub struct PskKeys {
    acceptor: SslAcceptor,
    identities: usize,
}

impl std::fmt::Debug for PskKeys {
    /// The number of identities only: keys are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskKeys")
            .field("identities", &self.identities)
            .finish_non_exhaustive()
    }
}

/// Parses a keys file: `identity:hexkey` a line; blank lines are skipped.
fn parse(text: &str) -> Result<HashMap<Vec<u8>, Vec<u8>>, PskError> {
    let mut keys = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why| PskError::Line { line: i + 1, why };
        let (identity, hex) = line.split_once(':').ok_or(bad("no ':'"))?;
        if identity.is_empty() {
            return Err(bad("no identity"));
        }
        if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 2 * 64 {
            return Err(bad("the key is not 1 to 64 bytes of hex"));
        }
        let key = (0..hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&hex[at..at + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad("the key is not hex"))?;
        if keys.insert(identity.as_bytes().to_vec(), key).is_some() {
            return Err(bad("a second key for the same identity"));
        }
    }
    if keys.is_empty() {
        return Err(PskError::Empty);
    }
    Ok(keys)
}

impl PskKeys {
    /// The keys of a keys file's text.
    pub fn from_file_text(text: &str) -> Result<Self, PskError> {
        let keys = parse(text)?;
        let identities = keys.len();
        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
        tls_psk_only(&mut builder)?;
        builder.set_psk_server_callback(move |_, identity, psk| {
            let Some(key) = identity.and_then(|id| keys.get(id)) else {
                tracing::warn!(
                    identity = identity.map(|id| String::from_utf8_lossy(id).into_owned()),
                    "NBD TLS-PSK: unknown identity"
                );
                return Ok(0);
            };
            psk[..key.len()].copy_from_slice(key);
            Ok(key.len())
        });
        Ok(Self {
            acceptor: builder.build(),
            identities,
        })
    }

    /// The TLS handshake on `stream`, as the server.
    pub async fn accept<S>(&self, stream: S) -> std::io::Result<SslStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let ssl = Ssl::new(self.acceptor.context()).map_err(std::io::Error::other)?;
        let mut stream = SslStream::new(ssl, stream).map_err(std::io::Error::other)?;
        Pin::new(&mut stream)
            .accept()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(stream)
    }
}

/// PSK key exchanges only (no certificate is offered): TLS 1.3's suites, which take an
/// external PSK through the server callback, and TLS 1.2's (EC)DHE-PSK and PSK suites.
fn tls_psk_only(builder: &mut SslContextBuilder) -> Result<(), PskError> {
    builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    builder.set_cipher_list("ECDHE-PSK:PSK:!NULL:!eNULL:!3DES:!RC4")?;
    builder.set_ciphersuites("TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_files_are_read_as_psktool_writes_them_and_bad_lines_are_named() {
        let keys = parse("alice:0123abcd\n\nbob:ff\r\n").unwrap();
        assert_eq!(keys[b"alice".as_slice()], [0x01, 0x23, 0xab, 0xcd]);
        assert_eq!(keys[b"bob".as_slice()], [0xff]);
        for (text, line) in [
            ("alice", 1),
            ("a:00\n:00", 2),
            ("a:0", 1),
            ("a:zz", 1),
            ("a:00\na:11", 2),
            (&format!("a:{}", "00".repeat(65)), 1),
        ] {
            match parse(text) {
                Err(PskError::Line { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(parse("\n\n"), Err(PskError::Empty)));
        let secret = "s3cr3t:00112233445566778899aabbccddeeff";
        let err = parse(&format!("{secret}\nbroken")).unwrap_err().to_string();
        assert!(!err.contains("00112233"), "{err}");
        let keys = PskKeys::from_file_text(secret).unwrap();
        assert!(!format!("{keys:?}").contains("0011"));
    }
}

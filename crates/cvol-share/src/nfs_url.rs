//! `nfs://HOST[:PORT]/EXPORT[?mountport=N]` — where an NFS share is.

use std::fmt;

/// A parsed NFS share URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsUrl {
    /// Server address (an IP address: the portmapper and MOUNT are asked by address).
    pub host: String,
    /// NFS port; `None` asks the portmapper.
    pub port: Option<u16>,
    /// MOUNT port; `None` means the NFS port when that is given, else the portmapper.
    pub mount_port: Option<u16>,
    /// The exported path to mount, e.g. `/srv/cvol`.
    pub export: String,
}

/// A URL that is not an NFS share URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid NFS URL {url:?}: {reason} (expected nfs://HOST[:PORT]/EXPORT[?mountport=N])")]
pub struct NfsUrlError {
    url: String,
    reason: &'static str,
}

impl NfsUrl {
    /// Parses `nfs://HOST[:PORT]/EXPORT[?mountport=N]`.
    pub fn parse(url: &str) -> Result<Self, NfsUrlError> {
        let bad = |reason| NfsUrlError {
            url: url.to_string(),
            reason,
        };
        let rest = url
            .strip_prefix("nfs://")
            .ok_or_else(|| bad("it does not start with nfs://"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let slash = rest.find('/').ok_or_else(|| bad("no export path"))?;
        let (authority, export) = rest.split_at(slash);
        if export.split('/').any(|c| c == "..") {
            return Err(bad("'..' in the export path"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                Some(port.parse().map_err(|_| bad("the port is not a number"))?),
            ),
            None => (authority, None),
        };
        if host.parse::<std::net::IpAddr>().is_err() {
            return Err(bad("the host must be an IP address"));
        }
        let mut mount_port = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("mountport", v)) => {
                    mount_port = Some(v.parse().map_err(|_| bad("mountport is not a number"))?)
                }
                _ => return Err(bad("unknown query parameter")),
            }
        }
        Ok(Self {
            host: host.to_string(),
            port,
            mount_port,
            export: export.trim_end_matches('/').to_string().replace("//", "/"),
        })
        .map(|mut u| {
            if u.export.is_empty() {
                u.export = "/".into();
            }
            u
        })
    }
}

impl fmt::Display for NfsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nfs://{}", self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        write!(f, "{}", self.export)?;
        if let Some(port) = self.mount_port {
            write!(f, "?mountport={port}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = NfsUrl::parse("nfs://127.0.0.1:12049/srv/cvol?mountport=12050").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.mount_port, u.export.as_str()),
            ("127.0.0.1", Some(12049), Some(12050), "/srv/cvol")
        );
        assert_eq!(
            u.to_string(),
            "nfs://127.0.0.1:12049/srv/cvol?mountport=12050"
        );
        let u = NfsUrl::parse("nfs://10.0.0.1/").unwrap();
        assert_eq!((u.port, u.export.as_str()), (None, "/"));
        for bad in [
            "http://x/y",
            "nfs://127.0.0.1",
            "nfs://host.example/x",
            "nfs://127.0.0.1:x/y",
            "nfs://127.0.0.1/a/../b",
            "nfs://127.0.0.1/a?x=1",
        ] {
            assert!(NfsUrl::parse(bad).is_err(), "{bad}");
        }
    }
}

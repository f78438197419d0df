//! Certificates for TLS tests, made with rcgen: a CA, identities it signs, and the bad
//! kinds (another CA's, expired, self-signed).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A certificate and key in PEM files.
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA whose certificate is in a PEM file, able to sign identities.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub cert: PathBuf,
    dir: PathBuf,
}

fn write_key(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Ca {
    /// A new CA named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let cert = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert, issuer.pem()).unwrap();
        Self {
            issuer,
            cert,
            dir: dir.to_path_buf(),
        }
    }

    /// An identity `name` for `names` (DNS names or IP addresses), signed by this CA.
    pub fn sign(&self, name: &str, names: &[&str]) -> Identity {
        self.sign_with(name, names, |_| {})
    }

    /// An identity like [`Ca::sign`] whose validity ended in 2021.
    pub fn sign_expired(&self, name: &str, names: &[&str]) -> Identity {
        self.sign_with(name, names, |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn sign_with(
        &self,
        name: &str,
        names: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Identity {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        write_identity(&self.dir, name, &cert.pem(), &key.serialize_pem())
    }
}

/// A self-signed identity `name` for `names`, in `dir`.
pub fn self_signed(dir: &Path, name: &str, names: &[&str]) -> Identity {
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    write_identity(dir, name, &cert.pem(), &key.serialize_pem())
}

fn write_identity(dir: &Path, name: &str, cert: &str, key: &str) -> Identity {
    let identity = Identity {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&identity.cert, cert).unwrap();
    write_key(&identity.key, key);
    identity
}

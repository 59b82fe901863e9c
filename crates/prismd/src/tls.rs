//! TLS for the listener: PEM files given by the operator, or a development CA and certificate
//! made on first use (`--dev-tls`) and reused on later starts, so clients trust one CA file
//! (`NODE_EXTRA_CA_CERTS=<data>/ca.pem`, `curl --cacert <data>/ca.pem`) across restarts.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Where the certificate and key come from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// Operator-provided PEM files (certificate chain, private key).
    Files { cert: PathBuf, key: PathBuf },
    /// A development CA in the data directory and a certificate it signs.
    Dev,
}

/// The PEM files the listener loads.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Set for development TLS: the CA clients must trust.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot write or read the development TLS files: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot create the development certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

pub const DEV_CA_FILE: &str = "ca.pem";
const DEV_CA_KEY_FILE: &str = "ca-key.pem";
const DEV_CERT_FILE: &str = "tls-cert.pem";
const DEV_KEY_FILE: &str = "tls-key.pem";
const DEV_CA_NAME: &str = "prism-auth development CA";
/// A leaf older than this is replaced at start-up (it is valid for a year).
const LEAF_RENEW_AFTER: std::time::Duration = std::time::Duration::from_secs(300 * 24 * 3600);

impl TlsSource {
    /// The files to load; for `Dev`, creates them when missing.
    pub fn files(&self, data_dir: &Path, hosts: &[String]) -> Result<TlsFiles, TlsError> {
        match self {
            TlsSource::Files { cert, key } => Ok(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: None,
            }),
            TlsSource::Dev => ensure_dev_files(data_dir, hosts),
        }
    }
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, DEV_CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    Ok(params)
}

/// Creates the CA once, and a certificate for `localhost`, `127.0.0.1`, `::1` and `hosts`
/// whenever it is missing or old.
fn ensure_dev_files(data_dir: &Path, hosts: &[String]) -> Result<TlsFiles, TlsError> {
    let ca_path = data_dir.join(DEV_CA_FILE);
    let ca_key_path = data_dir.join(DEV_CA_KEY_FILE);
    let cert_path = data_dir.join(DEV_CERT_FILE);
    let key_path = data_dir.join(DEV_KEY_FILE);

    let ca_key = if ca_path.exists() && ca_key_path.exists() {
        KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path)?)?
    } else {
        let key = KeyPair::generate()?;
        let ca = ca_params()?.self_signed(&key)?;
        crate::files::write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
        crate::files::write_private(&ca_path, ca.pem().as_bytes())?;
        tracing::info!(ca = %ca_path.display(), "created a development TLS certificate authority");
        // A new CA invalidates any leaf signed by an old one.
        let _ = std::fs::remove_file(&cert_path);
        key
    };

    let fresh = std::fs::metadata(&cert_path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| modified.elapsed().ok())
        .is_some_and(|age| age < LEAF_RENEW_AFTER);
    if !(fresh && key_path.exists()) {
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.extend(hosts.iter().filter(|h| !h.is_empty()).cloned());
        names.sort();
        names.dedup();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "prism-auth development server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(365);
        let leaf_key = KeyPair::generate()?;
        // The issuer is rebuilt from the same name and the stored key: that is all a
        // signature by this CA needs.
        let issuer = Issuer::new(ca_params()?, &ca_key);
        let leaf = params.signed_by(&leaf_key, &issuer)?;
        crate::files::write_private(&key_path, leaf_key.serialize_pem().as_bytes())?;
        crate::files::write_private(&cert_path, leaf.pem().as_bytes())?;
    }
    Ok(TlsFiles {
        cert: cert_path,
        key: key_path,
        ca: Some(ca_path),
    })
}

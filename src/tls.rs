//! TLS settings, built once at start from the config: the upstream side (`UpstreamTls`: CA
//! bundle or the system roots, optional client certificate for mutual TLS, the name to
//! verify) and the listener side (`ListenTls`: the proxy's certificate, optional
//! verification of client certificates). All files are read here, at start; a missing or
//! unreadable one is a start-up error that names the key and the path. rustls with the
//! `ring` provider.
//!
//! It also turns a failed handshake into a one-line reason a person can act on (`describe`).
//! Nothing here may log or display a private key: errors about the key file name the path
//! and what is wrong, never its contents. It reads the config's sections and is called by
//! `credentials` at start-up; `config` must not import it (settings flow down).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{
    self, AlertDescription, CertificateError, ClientConfig, RootCertStore, ServerConfig,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config;

/// Why the TLS settings could not be built. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {key} {}: {error}; {}", path.display(), crate::secret::read_hint(error))]
    Read {
        key: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{key} {path}: {reason}")]
    Content {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Settings(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        key,
        path: path.to_owned(),
        error,
    })
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Content {
            key,
            path: path.to_owned(),
            reason: format!("not a valid PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Content {
            key,
            path: path.to_owned(),
            reason: "no PEM certificate (-----BEGIN CERTIFICATE-----) found".to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(key, path)?;
    // The parser's error may quote a line of the file: it is not shown.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Content {
        key,
        path: path.to_owned(),
        reason: "no PEM private key (PKCS#8, PKCS#1 or SEC1) found".to_owned(),
    })
}

fn roots(key: &'static str, ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in certificates(key, path)? {
                store.add(cert).map_err(|e| TlsError::Content {
                    key,
                    path: path.to_owned(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::debug!(%error, "skipping a system CA certificate source");
            }
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::Settings(format!(
                    "no system CA certificates found; set {key}"
                )));
            }
        }
    }
    Ok(store)
}

/// TLS to the upstream: the connector and the name the server's certificate must carry.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// `None` when the upstream does not use TLS.
    pub fn from_config(upstream: &config::Upstream) -> Result<Option<UpstreamTls>, TlsError> {
        if !upstream.tls_enabled() {
            return Ok(None);
        }
        let roots = roots("[upstream] tls_ca_file", upstream.tls_ca_file.as_deref())?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(format!("TLS: {e}")))?
            .with_root_certificates(roots);
        let config = match (&upstream.tls_cert_file, &upstream.tls_key_file) {
            (Some(cert), Some(key)) => {
                let chain = certificates("[upstream] tls_cert_file", cert)?;
                let key = private_key("[upstream] tls_key_file", key)?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    TlsError::Settings(format!(
                        "[upstream] tls_cert_file and tls_key_file do not make a usable \
                         client certificate: {e}"
                    ))
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        let name = upstream.tls_name();
        let server_name = ServerName::try_from(name.to_owned()).map_err(|_| {
            TlsError::Settings(format!(
                "[upstream] `{name}` is not a valid TLS server name (set tls_server_name)"
            ))
        })?;
        Ok(Some(UpstreamTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        }))
    }

    /// Runs the client handshake over `tcp`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector.connect(self.server_name.clone(), tcp).await
    }

    /// The name the server's certificate is checked against.
    pub fn server_name(&self) -> String {
        match &self.server_name {
            ServerName::DnsName(name) => name.as_ref().to_owned(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            other => format!("{other:?}"),
        }
    }
}

/// TLS for clients of the listener.
#[derive(Clone)]
pub struct ListenTls {
    acceptor: TlsAcceptor,
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for ListenTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenTls").finish_non_exhaustive()
    }
}

impl ListenTls {
    /// `None` when the listener speaks plain TCP.
    pub fn from_config(listen: &config::Listen) -> Result<Option<ListenTls>, TlsError> {
        let (Some(cert), Some(key)) = (&listen.tls_cert_file, &listen.tls_key_file) else {
            return Ok(None);
        };
        let chain = certificates("[listen] tls_cert_file", cert)?;
        let key = private_key("[listen] tls_key_file", key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(format!("TLS: {e}")))?;
        let builder = match &listen.tls_client_ca_file {
            Some(ca) => {
                let roots = roots("[listen] tls_client_ca_file", Some(ca))?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::Settings(format!("[listen] tls_client_ca_file: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key).map_err(|e| {
            TlsError::Settings(format!(
                "[listen] tls_cert_file and tls_key_file do not make a usable certificate: {e}"
            ))
        })?;
        Ok(Some(ListenTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshake_timeout: listen.tls_handshake_timeout(),
        }))
    }

    /// Runs the server handshake over `tcp`, bounded by `handshake_timeout`.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(tcp))
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }
}

/// The TLS failure inside an I/O error, if there is one.
pub fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A one-line reason for a failed upstream handshake (or a TLS failure on an upstream
/// connection), with what to check. `name` is the name the certificate is checked against.
pub fn describe(error: &io::Error, name: &str) -> String {
    let Some(tls) = rustls_error(error) else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof => "the server closed the connection during the \
                handshake (is it speaking TLS on this port?)"
                .to_owned(),
            _ => format!("handshake failed: {error}"),
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => {
                "the server's certificate is signed by an unknown issuer (check tls_ca_file)"
                    .to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's certificate is not valid for the name `{name}` \
                     (check tls_server_name)"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (check the clocks)".to_owned()
            }
            CertificateError::Revoked => "the server's certificate is revoked".to_owned(),
            other => format!("the server's certificate is invalid: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => "the server requires a client \
                certificate (set tls_cert_file and tls_key_file)"
                .to_owned(),
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied => {
                format!("the server refused the client certificate (alert {alert:?})")
            }
            AlertDescription::HandshakeFailure => {
                "the server refused the handshake (alert HandshakeFailure)".to_owned()
            }
            other => format!("the server sent alert {other:?}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("handshake failed: {tls} (is the server speaking TLS on this port?)")
        }
        rustls::Error::NoCertificatesPresented => "the server presented no certificate".to_owned(),
        other => format!("handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_certificate_failures() {
        let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let text = describe(
            &wrap(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
            "redis",
        );
        assert!(text.contains("unknown issuer"), "{text}");
        let text = describe(
            &wrap(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            )),
            "wrong.example",
        );
        assert!(text.contains("`wrong.example`"), "{text}");
        let text = describe(
            &wrap(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired,
            )),
            "redis",
        );
        assert!(text.contains("requires a client certificate"), "{text}");
        let text = describe(&io::ErrorKind::UnexpectedEof.into(), "redis");
        assert!(text.contains("closed the connection"), "{text}");
    }

    #[test]
    fn missing_key_file_names_the_path() {
        let error = private_key("[upstream] tls_key_file", Path::new("/nonexistent/key.pem"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.starts_with("cannot read [upstream] tls_key_file /nonexistent/key.pem")
                && error.contains("mount the Secret as a directory"),
            "{error}"
        );
    }
}

//! Built-in TLS (`--tls-cert`, `--tls-key`): the certificate chain and key,
//! read at start and again on SIGHUP, and the rustls configurations the two
//! public listeners build their handshakes from.
//!
//! A reload swaps the configurations every new handshake reads; a
//! connection keeps the session it has, so nothing is dropped. Files that
//! do not load (missing, not PEM, key not matching the certificate) leave
//! the configurations in force as they were.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use futures_lite::future;
use futures_rustls::server::TlsStream;
use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::conn_io::Replayed;

/// The protocols the AS listener offers in ALPN, preferred first: HTTP/2
/// goes to `http2_conn`, HTTP/1.1 to `http_conn`.
const AS_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// A WebSocket is an HTTP/1.1 upgrade (RFC 6455); browsers offer `h2` too.
const UA_ALPN: [&[u8]; 1] = [b"http/1.1"];

/// Where the certificate chain and its key are read from (PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The configurations in force, one per listener.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Listeners>,
}

#[derive(Clone)]
struct Listeners {
    ua: Arc<ServerConfig>,
    as_listener: Arc<ServerConfig>,
}

impl Tls {
    /// Reads the files; the error names the file and what is wrong with it.
    pub fn load(files: &TlsFiles) -> Result<Tls, String> {
        Ok(Tls {
            current: RwLock::new(Listeners::load(files)?),
            files: files.clone(),
        })
    }

    /// Reads the files again (SIGHUP). On an error the configurations in
    /// force stay, and the error says why.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = Listeners::load(&self.files)?;
        match self.current.write() {
            Ok(mut current) => *current = fresh,
            // A reader cannot panic while holding the lock (it only clones);
            // were it poisoned, the new configurations are still whole.
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// The configuration a new UA handshake uses.
    pub fn ua(&self) -> Arc<ServerConfig> {
        self.listeners().ua
    }

    fn listeners(&self) -> Listeners {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The TLS handshake of a new AS connection (after its PROXY header, if
    /// any: `read` holds the bytes read past it), within `deadline`; None if
    /// it failed or took too long.
    pub async fn accept_as(
        &self,
        stream: TcpStream,
        read: Vec<u8>,
        deadline: Instant,
    ) -> Option<TlsStream<Replayed<TcpStream>>> {
        let acceptor = TlsAcceptor::from(self.listeners().as_listener);
        let handshake = async { acceptor.accept(Replayed::new(read, stream)).await.ok() };
        let late = async {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
            None
        };
        future::or(handshake, late).await
    }
}

impl Listeners {
    fn load(files: &TlsFiles) -> Result<Listeners, String> {
        let chain = certificates(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|error| format!("TLS key {}: {error}", files.key.display()))?;
        let config = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, String> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .and_then(|builder| {
                    builder
                        .with_no_client_auth()
                        .with_single_cert(chain.clone(), key.clone_key())
                })
                .map_err(|error| {
                    format!(
                        "TLS certificate {} with key {}: {error}",
                        files.cert.display(),
                        files.key.display()
                    )
                })?;
            config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
            Ok(Arc::new(config))
        };
        Ok(Listeners {
            ua: config(&UA_ALPN)?,
            as_listener: config(&AS_ALPN)?,
        })
    }
}

/// Every certificate of the PEM file `path` (the server's first, then its
/// chain); at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let wrong =
        |error: &dyn std::fmt::Display| format!("TLS certificate {}: {error}", path.display());
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|error| wrong(&error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| wrong(&error))?;
    if chain.is_empty() {
        return Err(wrong(&"no certificate in the file"));
    }
    Ok(chain)
}

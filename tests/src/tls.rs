//! TLS for the tests: a CA made at test time (rcgen) and the server
//! certificates it signs, what a client sees of a listener's certificate,
//! and `https://` requests through curl (`--http1.1`, or `--http2`: HTTP/2
//! chosen by ALPN).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::util::TempDir;

/// A certificate authority made for one test, with its PEM file.
pub struct TestCa {
    dir: TempDir,
    params: CertificateParams,
    key: KeyPair,
}

/// A server certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate's DER, to tell which one a server presents.
    pub der: Vec<u8>,
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Herald test CA");
        let cert = params.self_signed(&key).expect("self-signed CA");
        let dir = TempDir::new("ca");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write ca.pem");
        TestCa { dir, params, key }
    }

    /// The CA certificate (PEM), for `curl --cacert` and browsers.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `localhost` and 127.0.0.1 signed by this CA, as
    /// `<name>.pem` and `<name>.key` in the CA's directory.
    pub fn issue(&self, name: &str) -> ServerCert {
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("herald test {name}"));
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let cert_path = self.dir.path().join(format!("{name}.pem"));
        let key_path = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        ServerCert {
            cert: cert_path,
            key: key_path,
            der: cert.der().to_vec(),
        }
    }

    /// A rustls client that trusts this CA only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        client_config(&self.ca_pem())
    }
}

/// A rustls client trusting only the CA in `ca_pem`, offering HTTP/1.1.
pub fn client_config(ca_pem: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS client connection on `addr` (127.0.0.1:port), handshake done.
pub fn tls_connect(
    addr: &str,
    config: Arc<ClientConfig>,
) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
    tcp.set_nodelay(true).ok();
    let name = ServerName::try_from("localhost").expect("server name");
    let conn = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    }
    Ok(stream)
}

/// The certificate `addr` presents to a client trusting `config`'s CA.
pub fn served_certificate(addr: &str, config: Arc<ClientConfig>) -> Result<Vec<u8>, String> {
    let stream = tls_connect(addr, config)?;
    let certs = stream
        .conn
        .peer_certificates()
        .ok_or("no certificate presented")?;
    Ok(certs[0].to_vec())
}

/// What curl got from one request.
#[derive(Debug)]
pub struct CurlAnswer {
    pub status: u16,
    /// `1.1` or `2`.
    pub http_version: String,
    pub body: String,
}

/// One request with curl trusting `ca_pem`; `http2` asks for HTTP/2 by ALPN
/// (`--http2`), else HTTP/1.1. One request per run (see the module doc of
/// the TLS tests on curl 7.88).
pub fn curl(
    ca_pem: &Path,
    http2: bool,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> CurlAnswer {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca_pem)
        .arg(if http2 { "--http2" } else { "--http1.1" })
        .args(["-X", method, "--data-binary", "@-", "-o", "-"])
        .args(["-w", "\n%{http_code} %{http_version}"]);
    for (name, value) in headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    cmd.arg(url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run curl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("curl stdin");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("curl stdout");
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    let status = child.wait().expect("curl exit");
    assert!(
        status.success(),
        "curl {method} {url} failed: {status} {err}"
    );
    let (body, last) = out.rsplit_once('\n').unwrap_or(("", &out));
    let (code, version) = last.split_once(' ').unwrap_or((last, ""));
    CurlAnswer {
        status: code.parse().unwrap_or(0),
        http_version: version.to_owned(),
        body: body.to_owned(),
    }
}

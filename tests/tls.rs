//! TLS (issue 7, items 3 and 4) against real redis-server processes listening on
//! `tls-port` with certificates generated here (rcgen): TLS upstream on the shared lanes
//! and on pinned connections, mutual TLS, and the clear, secret-free errors for a wrong
//! CA, a wrong name, an expired certificate and a missing client certificate; TLS for
//! clients, with and without client-certificate verification.
//!
//! Each test's Redis keeps its plain port too (the harness uses it to wait for
//! readiness); the proxy is only pointed at the TLS port, which speaks nothing but TLS.
//! Timeouts here are hang detectors, not thresholds.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

const HANG: Duration = Duration::from_secs(10);
const PASSWORD: &str = "Tls-Upstream-Pw-9931";

/// Certificates and keys, written as PEM files into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate issued by `issuer`; returns (cert PEM, key PEM).
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
    expired: bool,
) -> (String, String) {
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// ca.pem (the CA everything is issued by), other-ca.pem (one that issued nothing here),
/// server.{crt,key}, expired.{crt,key}, client.{crt,key}.
fn pki() -> Pki {
    let dir = tempfile::Builder::new()
        .prefix("ambassador-tls-")
        .tempdir()
        .unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    let ca = ca("redis-ambassador test CA");
    write("ca.pem", &ca.pem());
    write("other-ca.pem", &ca_pem_other());
    let (cert, key) = leaf(&ca, "redis", ExtendedKeyUsagePurpose::ServerAuth, false);
    write("server.crt", &cert);
    write("server.key", &key);
    let (cert, key) = leaf(&ca, "redis", ExtendedKeyUsagePurpose::ServerAuth, true);
    write("expired.crt", &cert);
    write("expired.key", &key);
    let (cert, key) = leaf(&ca, "app", ExtendedKeyUsagePurpose::ClientAuth, false);
    write("client.crt", &cert);
    write("client.key", &key);
    Pki { dir }
}

fn ca_pem_other() -> String {
    ca("some other CA").pem()
}

/// A Redis with `requirepass` serving TLS (with `cert`) on a port of its own; returns
/// the server and that port.
fn tls_redis(pki: &Pki, cert: &str, key: &str, auth_clients: bool) -> (RedisServer, u16) {
    let tls_port = free_port();
    let lines = [
        format!("tls-port {tls_port}"),
        format!("tls-cert-file {}", pki.path(cert).display()),
        format!("tls-key-file {}", pki.path(key).display()),
        format!("tls-ca-cert-file {}", pki.path("ca.pem").display()),
        format!(
            "tls-auth-clients {}",
            if auth_clients { "yes" } else { "no" }
        ),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let server = RedisServer::start_with(ServerAuth::Password(PASSWORD.to_owned()), &lines);
    (server, tls_port)
}

fn tls_proxy(tls_port: u16) -> AmbassadorBuilder {
    AmbassadorBuilder::new(&format!("rediss://127.0.0.1:{tls_port}"))
        .upstream_password(PASSWORD.as_bytes())
        .reconnect_backoff_ms(50)
        .log_level("debug")
}

/// Asserts a one-line `-ERR upstream unavailable: TLS: …` containing `reason`, and that
/// neither it, `/readyz` nor the log shows a secret.
#[track_caller]
fn assert_tls_error(proxy: &Ambassador, reason: &str) {
    let mut c = proxy.conn();
    let reply = c.call(&["GET", "k"]);
    let text = String::from_utf8_lossy(&reply).into_owned();
    assert!(
        text.starts_with("-ERR upstream unavailable: TLS: "),
        "{text}\n{}",
        proxy.log()
    );
    assert!(text.contains(reason), "{text}");
    assert_eq!(text.matches("\r\n").count(), 1, "one line: {text}");
    assert!(!text.contains(PASSWORD), "{text}");
    let mut ready = proxy.http_get("/readyz");
    let shown = wait_until(HANG, || {
        ready = proxy.http_get("/readyz");
        ready.body.contains("TLS: ")
    });
    assert!(shown, "/readyz: {} {}", ready.status, ready.body);
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains(reason), "{}", ready.body);
    assert!(!ready.body.contains(PASSWORD));
    let log = proxy.log();
    assert!(!log.contains(PASSWORD));
    assert!(!log.contains("PRIVATE KEY"));
}

/// SET/GET on the shared lanes, MULTI/EXEC and SUBSCRIBE+PUBLISH on pinned connections,
/// all over TLS with the password.
#[test]
fn tls_upstream_shared_and_pinned() {
    let pki = pki();
    let (upstream, tls_port) = tls_redis(&pki, "server.crt", "server.key", false);
    let proxy = tls_proxy(tls_port)
        .upstream_tls_ca_file(&pki.path("ca.pem"))
        .start();
    let mut c = proxy.conn();
    c.call_expect(&["SET", "k", "v"], b"+OK\r\n");
    c.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    // Pipelined, so the lanes carry several requests per TLS record.
    c.send(
        &[
            resp(&["INCR", "n"]),
            resp(&["INCR", "n"]),
            resp(&["GET", "n"]),
        ]
        .concat(),
    );
    assert_eq!(
        c.read_replies(3),
        vec![
            b":1\r\n".to_vec(),
            b":2\r\n".to_vec(),
            b"$1\r\n2\r\n".to_vec()
        ]
    );
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["SET", "t", "1"], b"+QUEUED\r\n");
    c.call_expect(&["GET", "t"], b"+QUEUED\r\n");
    c.call_expect(&["EXEC"], b"*2\r\n+OK\r\n$1\r\n1\r\n");

    let mut sub = proxy.conn();
    sub.call_expect(
        &["SUBSCRIBE", "news"],
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n",
    );
    c.call_expect(&["PUBLISH", "news", "hello"], b":1\r\n");
    sub.expect(b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n");
    sub.call_expect(
        &["UNSUBSCRIBE", "news"],
        b"*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:0\r\n",
    );
    sub.call_expect(&["PING"], b"+PONG\r\n");

    // The data went to the TLS Redis (read back on its plain port).
    let mut direct = upstream.conn();
    direct.call_expect(&["AUTH", PASSWORD], b"+OK\r\n");
    direct.call_expect(&["GET", "k"], b"$1\r\nv\r\n");
    assert_eq!(proxy.http_get("/readyz").status, 200);
    assert!(!proxy.log().contains(PASSWORD));
}

/// A CA that did not issue the server's certificate.
#[test]
fn wrong_ca_is_a_clear_error() {
    let pki = pki();
    let (_upstream, tls_port) = tls_redis(&pki, "server.crt", "server.key", false);
    let proxy = tls_proxy(tls_port)
        .upstream_tls_ca_file(&pki.path("other-ca.pem"))
        .start();
    assert_tls_error(&proxy, "unknown issuer");
}

/// `tls_server_name` that the certificate does not carry.
#[test]
fn name_mismatch_is_a_clear_error() {
    let pki = pki();
    let (_upstream, tls_port) = tls_redis(&pki, "server.crt", "server.key", false);
    let proxy = tls_proxy(tls_port)
        .upstream_tls_ca_file(&pki.path("ca.pem"))
        .configure(|c| c.upstream.tls_server_name = Some("wrong.example".to_owned()))
        .start();
    assert_tls_error(&proxy, "not valid for the name `wrong.example`");
}

/// The server's certificate expired.
#[test]
fn expired_certificate_is_a_clear_error() {
    let pki = pki();
    let (_upstream, tls_port) = tls_redis(&pki, "expired.crt", "expired.key", false);
    let proxy = tls_proxy(tls_port)
        .upstream_tls_ca_file(&pki.path("ca.pem"))
        .start();
    assert_tls_error(&proxy, "expired");
}

/// Plain `host:port` with `tls = true` works like `rediss://`; mutual TLS with the client
/// certificate works, and without it the error says a client certificate is required.
#[test]
fn mutual_tls() {
    let pki = pki();
    let (_upstream, tls_port) = tls_redis(&pki, "server.crt", "server.key", true);
    let with_cert = AmbassadorBuilder::new(&format!("127.0.0.1:{tls_port}"))
        .upstream_password(PASSWORD.as_bytes())
        .upstream_tls_ca_file(&pki.path("ca.pem"))
        .configure(|c| {
            c.upstream.tls = Some(true);
            c.upstream.tls_cert_file = Some(pki.path("client.crt"));
            c.upstream.tls_key_file = Some(pki.path("client.key"));
        })
        .start();
    let mut c = with_cert.conn();
    c.call_expect(&["SET", "m", "1"], b"+OK\r\n");
    c.call_expect(&["MULTI"], b"+OK\r\n");
    c.call_expect(&["GET", "m"], b"+QUEUED\r\n");
    c.call_expect(&["EXEC"], b"*1\r\n$1\r\n1\r\n");
    assert!(!with_cert.log().contains("PRIVATE KEY"));

    let without = tls_proxy(tls_port)
        .upstream_tls_ca_file(&pki.path("ca.pem"))
        .start();
    assert_tls_error(&without, "client certificate");
}

/// A key file that is not there stops the start, naming the key and the path.
#[test]
fn missing_key_file_is_a_start_up_error() {
    let pki = pki();
    let mut config = AmbassadorConfig::new("rediss://127.0.0.1:1");
    config.upstream.tls_ca_file = Some(pki.path("ca.pem"));
    config.upstream.tls_cert_file = Some(pki.path("client.crt"));
    config.upstream.tls_key_file = Some(pki.path("missing.key"));
    let config = config.write(&pki.path("ambassador.toml"));
    let (status, output) = check_config(&config);
    assert!(!status.success(), "{output}");
    let missing = pki.path("missing.key");
    assert!(
        output.contains(&format!(
            "cannot read [upstream] tls_key_file {}",
            missing.display()
        )),
        "{output}"
    );
}

/// A tokio-rustls client trusting the test CA, optionally with the client certificate.
fn client_config(pki: &Pki, with_cert: bool) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = if with_cert {
        let chain = CertificateDer::pem_file_iter(pki.path("client.crt"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(pki.path("client.key")).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(config)
}

/// Connects over TLS, sends `requests` and reads until `expected` bytes arrived (or
/// EOF/error). Returns what was read, or the error text.
async fn tls_exchange(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    requests: &[u8],
    expected: usize,
) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(requests).await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    while got.len() < expected {
        let mut chunk = [0u8; 4096];
        match tls.read(&mut chunk).await {
            Ok(0) => return Err(format!("EOF after {:?}", escape(&got))),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(got)
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(HANG, f)
                .await
                .expect("TLS client hung")
        })
}

fn tls_listener(pki: &Pki, upstream: &RedisServer) -> AmbassadorBuilder {
    AmbassadorBuilder::for_server(upstream)
        .listen_tls(&pki.path("server.crt"), &pki.path("server.key"))
}

/// TLS for clients: PING, SET/GET, a pipelined transaction and pub/sub over TLS.
#[test]
fn tls_downstream() {
    let pki = pki();
    let upstream = RedisServer::start();
    let proxy = tls_listener(&pki, &upstream).start();
    let requests = [
        resp(&["PING"]),
        resp(&["SET", "d", "v"]),
        resp(&["GET", "d"]),
        resp(&["MULTI"]),
        resp(&["INCR", "c"]),
        resp(&["EXEC"]),
    ]
    .concat();
    let want = b"+PONG\r\n+OK\r\n$1\r\nv\r\n+OK\r\n+QUEUED\r\n*1\r\n:1\r\n";
    let got = block_on(tls_exchange(
        proxy.port(),
        client_config(&pki, false),
        &requests,
        want.len(),
    ))
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    assert_bytes_eq("replies over TLS", want, &got);

    // Relay mode (SUBSCRIBE) over TLS: a message published meanwhile arrives.
    let port = proxy.port();
    let config = client_config(&pki, false);
    let publisher = upstream.addr();
    let got = block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        tls.write_all(&resp(&["SUBSCRIBE", "ch"])).await.unwrap();
        tls.flush().await.unwrap();
        let subscribed = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        let mut got = vec![0u8; subscribed.len()];
        tls.read_exact(&mut got).await.unwrap();
        assert_bytes_eq("subscribed", subscribed, &got);
        let port: u16 = publisher.rsplit(':').next().unwrap().parse().unwrap();
        tokio::task::spawn_blocking(move || {
            RawConn::connect(port).call_expect(&["PUBLISH", "ch", "hi"], b":1\r\n")
        })
        .await
        .unwrap();
        let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
        let mut got = vec![0u8; message.len()];
        tls.read_exact(&mut got).await.unwrap();
        got
    });
    assert_bytes_eq(
        "message over TLS",
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
        &got,
    );
    // A plain-text client does not get a Redis reply from a TLS listener.
    let mut plain = proxy.conn();
    plain.send(&resp(&["PING"]));
    assert!(
        plain
            .try_read_reply(Duration::from_secs(2))
            .is_none_or(|r| r != b"+PONG\r\n")
    );
}

/// With `tls_client_ca_file`, a client without a certificate is refused and one with a
/// certificate the CA issued is served.
#[test]
fn tls_downstream_client_certificates() {
    let pki = pki();
    let upstream = RedisServer::start();
    let proxy = tls_listener(&pki, &upstream)
        .configure(|c| c.listen.tls_client_ca_file = Some(pki.path("ca.pem")))
        .start();
    let ping = resp(&["PING"]);
    let got = block_on(tls_exchange(
        proxy.port(),
        client_config(&pki, true),
        &ping,
        7,
    ))
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    assert_bytes_eq("PING with a client certificate", b"+PONG\r\n", &got);

    let failures = || {
        proxy
            .scrape()
            .lines()
            .find_map(|l| l.strip_prefix("redis_ambassador_client_tls_handshake_failures_total "))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    let before = failures();
    let refused = block_on(tls_exchange(
        proxy.port(),
        client_config(&pki, false),
        &ping,
        7,
    ));
    assert!(
        refused.is_err(),
        "served without a certificate: {refused:?}"
    );
    assert!(
        wait_until(HANG, || failures() > before),
        "{}",
        proxy.scrape()
    );
}

/// Over `max_clients` a TLS client is only closed (no reply before a handshake).
#[test]
fn tls_downstream_max_clients() {
    let pki = pki();
    let upstream = RedisServer::start();
    let proxy = tls_listener(&pki, &upstream).max_clients(1).start();
    let port = proxy.port();
    let config = client_config(&pki, false);
    block_on(async move {
        // The harness's readiness probe (a bare TCP connect) holds the one slot until the
        // proxy sees it close: retry until the first client gets in.
        let mut first = loop {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let attempt = async {
                let mut tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await?;
                tls.write_all(&resp(&["PING"])).await?;
                tls.flush().await?;
                let mut pong = [0u8; 7];
                tls.read_exact(&mut pong).await?;
                assert_eq!(&pong, b"+PONG\r\n");
                std::io::Result::Ok(tls)
            };
            match attempt.await {
                Ok(tls) => break tls,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let mut pong = [0u8; 7];
        let second = tls_exchange(port, config, &resp(&["PING"]), 7).await;
        assert!(second.is_err(), "second client served: {second:?}");
        // The first is still served.
        first.write_all(&resp(&["PING"])).await.unwrap();
        first.flush().await.unwrap();
        first.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"+PONG\r\n");
    });
}

//! The proxy's admin endpoint (`/metrics`, `/healthz`, `/readyz`) from the tests' side:
//! a one-request HTTP/1.1 client with a deadline, and reading one sample out of a
//! Prometheus scrape.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::ambassador::Ambassador;

/// An HTTP response from the admin endpoint.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// The head after the status line, as received.
    pub headers: String,
    pub body: String,
}

impl HttpResponse {
    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends raw `request` bytes to 127.0.0.1:`port` and reads the response until EOF.
/// `None` when the connection fails, closes without a status line, or `timeout` passes.
pub fn http_raw(port: u16, request: &[u8], timeout: Duration) -> Option<HttpResponse> {
    http_raw_to(([127, 0, 0, 1], port).into(), request, timeout)
}

/// [`http_raw`] to any address.
pub fn http_raw_to(addr: SocketAddr, request: &[u8], timeout: Duration) -> Option<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(request).ok()?;
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if Instant::now() > deadline {
            return None;
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(_) => return None,
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line.split(' ').nth(1)?.parse().ok()?;
    Some(HttpResponse {
        status,
        headers: headers.to_string(),
        body: body.to_string(),
    })
}

/// The value of one sample (`name{labels}` as printed) in a Prometheus scrape, 0 if absent.
pub fn scraped_value(scrape: &str, sample: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `METHOD path` on 127.0.0.1:`port`, one request per connection. Panics on failure.
#[track_caller]
pub fn http(port: u16, method: &str, path: &str) -> HttpResponse {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    http_raw(port, request.as_bytes(), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{method} {path} on 127.0.0.1:{port}: no HTTP response"))
}

/// `METHOD path` on `addr` (any address), one request per connection. Panics on failure.
#[track_caller]
pub fn http_to(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_raw_to(addr, request.as_bytes(), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{method} {path} on {addr}: no HTTP response"))
}

impl Ambassador {
    /// `POST path` on the admin endpoint (no body).
    #[track_caller]
    pub fn http_post(&self, path: &str) -> HttpResponse {
        http(self.metrics_port(), "POST", path)
    }
    /// `GET path` on the admin endpoint.
    #[track_caller]
    pub fn http_get(&self, path: &str) -> HttpResponse {
        http(self.metrics_port(), "GET", path)
    }
    /// The `/metrics` text.
    #[track_caller]
    pub fn scrape(&self) -> String {
        let r = self.http_get("/metrics");
        assert_eq!(r.status, 200, "/metrics: {r:?}");
        r.body
    }
}

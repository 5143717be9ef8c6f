//! `redis-ambassador wait`: blocks until an ambassador's admin endpoint answers `GET
//! /readyz` with 200, for an application's entrypoint (`redis-ambassador wait && app`) in
//! a pod where the ambassador is not a native sidecar, so nothing else holds the
//! application back until the ambassador can serve.
//!
//! It is a client of the admin endpoint and nothing more: plain blocking HTTP/1.1 over a
//! `std` TCP stream (one request per connection, as the endpoint serves them), no runtime,
//! every step bounded by what is left of the timeout. It never reads a secret; the reason
//! it reports is `/readyz`'s own line or the connection error.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The admin address when neither `--admin` nor `--config` says: `[metrics] address`'s
/// default.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9121";

/// Time between two asks.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Longest one ask may take (connect, request, response), within what is left.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of a response that is read: `/readyz` answers one short line.
const MAX_RESPONSE_BYTES: u64 = 16 * 1024;

/// Where to ask, from a `[metrics] address`: an unspecified address (`0.0.0.0`, `::`), which
/// the ambassador binds to serve the pod IP, is asked on loopback, which it then serves too.
pub fn admin_from_bound(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), address.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), address.port())
        }
        _ => address,
    }
}

/// Resolves `--admin` (`host:port`, a name such as `localhost` included).
pub fn resolve_admin(address: &str) -> Result<SocketAddr, String> {
    address
        .to_socket_addrs()
        .map_err(|e| format!("--admin {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("--admin {address}: no address"))
}

/// Parses a duration: a whole number with a unit, `ms`, `s` or `m` (`500ms`, `30s`, `2m`);
/// a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 30s or 2m"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(number)),
        "" | "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number.saturating_mul(60))),
        _ => Err(format!(
            "`{text}`: the unit must be ms, s or m (500ms, 30s, 2m)"
        )),
    }
}

/// Asks `admin` for `/readyz` until it answers 200 (`Ok`) or `timeout` has passed (`Err`
/// with the last reason: `/readyz`'s body, or why the endpoint could not be asked).
pub fn until_ready(admin: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let reason = match ask_readyz(admin, left.min(ASK_TIMEOUT)) {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => format!("/readyz answered {status}: {}", body.trim()),
            Err(error) => format!("cannot ask {admin}/readyz: {error}"),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(reason);
        }
        std::thread::sleep(POLL_INTERVAL.min(left));
    }
}

/// One `GET /readyz`: the status code and the body.
fn ask_readyz(admin: SocketAddr, timeout: Duration) -> std::io::Result<(u16, String)> {
    // A zero timeout is an error for the socket calls: the last ask gets a moment.
    let timeout = timeout.max(Duration::from_millis(10));
    let mut stream = TcpStream::connect_timeout(&admin, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "s", "1.5s", "-1s", "3h", "10 sec"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unspecified_admin_address_is_asked_on_loopback() {
        let asked = |a: &str| admin_from_bound(a.parse().unwrap()).to_string();
        assert_eq!(asked("0.0.0.0:9121"), "127.0.0.1:9121");
        assert_eq!(asked("[::]:9121"), "[::1]:9121");
        assert_eq!(asked("10.0.0.7:9121"), "10.0.0.7:9121");
        assert_eq!(
            resolve_admin("127.0.0.1:1").unwrap().to_string(),
            "127.0.0.1:1"
        );
        assert!(resolve_admin("no-port").is_err());
    }

    #[test]
    fn nothing_listening_is_a_reason_at_the_timeout() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let error = until_ready(address, Duration::from_millis(300)).unwrap_err();
        assert!(
            error.starts_with(&format!("cannot ask {address}/readyz")),
            "{error}"
        );
    }
}

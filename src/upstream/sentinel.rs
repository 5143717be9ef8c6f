//! Sentinel mode: where the master is.
//!
//! The master's address is asked of the Sentinels (`SENTINEL GET-MASTER-ADDR-BY-NAME`), the
//! first that answers in the order configured (one that answered last time is asked first),
//! and kept until something says it is wrong:
//!
//! - a connect to it fails, or the server there says (HELLO's `role`) it is not a master —
//!   a demoted master that came back as a replica — so the next connect asks again;
//! - a Sentinel announces `+switch-master` for our master (a watcher stays subscribed to
//!   one Sentinel, moving to the next when it goes away, and asks again after each move in
//!   case it missed an announcement).
//!
//! Every change of address bumps a generation. Connections remember the generation they
//! were made in: the pinned pool drops older ones at checkout, and the shared lanes replace
//! theirs before their next write, so after a failover no command goes to the old master.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis_protocol::resp2::decode::decode as decode_resp2;
use redis_protocol::resp2::types::OwnedFrame;

use super::conn::{Dialer, UpstreamConn};
use super::error::{AuthFailure, UnavailableReason, UpstreamError};
use crate::protocol::encode;
use crate::secret::RotatingSecret;

/// How long the watcher waits before trying the next Sentinel after losing one.
const WATCH_RETRY: Duration = Duration::from_secs(1);
/// The watcher PINGs its Sentinel after this much silence, and moves on when the PING
/// goes unanswered for as long again.
const WATCH_IDLE: Duration = Duration::from_secs(10);

/// The Sentinels of one master, and what they said last.
pub struct Sentinels {
    addresses: Vec<String>,
    master_name: String,
    /// How Sentinels are dialled: their own user, the upstream's TLS settings.
    dialer: Dialer,
    password: Option<std::sync::Arc<RotatingSecret>>,
    master: Mutex<Known>,
    generation: AtomicU64,
    /// The Sentinel to ask first (the last that answered).
    preferred: AtomicUsize,
}

/// What the Sentinels said last.
#[derive(Debug, Default)]
struct Known {
    /// The master's `host:port`, while believed (`None`: ask before the next connect).
    believed: Option<String>,
    /// The last address given, believed or not: a new answer is a change only if it differs.
    last: Option<String>,
}

impl std::fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinels")
            .field("addresses", &self.addresses)
            .field("master_name", &self.master_name)
            .finish_non_exhaustive()
    }
}

impl Sentinels {
    pub fn new(
        addresses: Vec<String>,
        master_name: String,
        dialer: Dialer,
        password: Option<std::sync::Arc<RotatingSecret>>,
    ) -> Sentinels {
        Sentinels {
            addresses,
            master_name,
            dialer,
            password,
            master: Mutex::new(Known::default()),
            generation: AtomicU64::new(0),
            preferred: AtomicUsize::new(0),
        }
    }

    /// Bumped at every change of master address.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The master's address and its generation: the one believed, or a fresh answer.
    pub async fn master(&self) -> Result<(String, u64), UpstreamError> {
        if let Some(address) = self.master.lock().ok().and_then(|m| m.believed.clone()) {
            return Ok((address, self.generation()));
        }
        let address = self.ask().await?;
        Ok((address.clone(), self.set_master(address)))
    }

    /// Forgets `address` as the master (a connect to it failed, or it is not a master):
    /// the next connect asks the Sentinels again.
    pub fn forget(&self, address: &str) {
        if let Ok(mut master) = self.master.lock() {
            if master.believed.as_deref() == Some(address) {
                master.believed = None;
            }
        }
    }

    /// Records the master's address; returns the generation it belongs to.
    fn set_master(&self, address: String) -> u64 {
        let Ok(mut master) = self.master.lock() else {
            return self.generation();
        };
        master.believed = Some(address.clone());
        let previous = master.last.replace(address.clone());
        if previous.as_deref() != Some(address.as_str()) {
            match previous {
                Some(old) => {
                    crate::metrics::global().master_changes.increment(1);
                    tracing::info!(
                    master = %self.master_name,
                    %old,
                    new = %address,
                    "Sentinels report a new master address"
                    );
                }
                None => tracing::debug!(master = %self.master_name, %address, "master found"),
            }
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.generation()
    }

    /// Asks the Sentinels in turn, the last one that answered first.
    async fn ask(&self) -> Result<String, UpstreamError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..self.addresses.len() {
            let index = (first + i) % self.addresses.len();
            let sentinel = &self.addresses[index];
            match self.ask_one(sentinel).await {
                Ok(address) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(address);
                }
                Err(error) => {
                    tracing::debug!(%sentinel, %error, "Sentinel did not give the master");
                    errors.push(error);
                }
            }
        }
        // An authentication failure says more than "unreachable": report it first.
        let error = errors
            .iter()
            .find(|e| matches!(e, UpstreamError::AuthFailed(_)))
            .or(errors.first())
            .cloned();
        Err(match error {
            Some(UpstreamError::AuthFailed(failure)) => {
                AuthFailure::Sentinel(Box::new(failure)).into()
            }
            Some(last) => UnavailableReason::NoSentinelAnswered {
                master: self.master_name.clone(),
                last,
            }
            .into(),
            None => UnavailableReason::NoSentinel.into(),
        })
    }

    async fn connect(&self, sentinel: &str) -> Result<UpstreamConn, UpstreamError> {
        let password = self.password.as_ref().map(|p| p.current());
        let (conn, _) = UpstreamConn::connect(&self.dialer, sentinel, password.as_ref()).await?;
        Ok(conn)
    }

    async fn ask_one(&self, sentinel: &str) -> Result<String, UpstreamError> {
        let mut conn = self.connect(sentinel).await?;
        let request = encode::command(&[
            &b"SENTINEL"[..],
            b"GET-MASTER-ADDR-BY-NAME",
            self.master_name.as_bytes(),
        ]);
        conn.write_all(&[request], Some(self.dialer.connect_timeout))
            .await?;
        let (reply, _) = conn.read_reply(Some(self.dialer.connect_timeout)).await?;
        parse_master_address(&reply).ok_or_else(|| {
            UnavailableReason::UnknownMaster {
                sentinel: sentinel.to_owned(),
                master: self.master_name.clone(),
                reply: String::from_utf8_lossy(reply.strip_suffix(b"\r\n").unwrap_or(&reply))
                    .into_owned(),
            }
            .into()
        })
    }

    /// Follows `+switch-master` announcements for as long as the proxy runs: subscribed to
    /// one Sentinel at a time, re-asking for the master after every (re)subscription.
    pub async fn watch(self: std::sync::Arc<Self>) {
        let mut next = 0;
        loop {
            let sentinel = self.addresses[next % self.addresses.len()].clone();
            next += 1;
            match self.follow(&sentinel).await {
                Ok(()) => {}
                Err(error) => {
                    tracing::debug!(%sentinel, %error, "stopped following a Sentinel");
                }
            }
            tokio::time::sleep(WATCH_RETRY).await;
        }
    }

    /// Subscribes to `+switch-master` on one Sentinel and applies what it announces, until
    /// the connection fails.
    async fn follow(&self, sentinel: &str) -> Result<(), UpstreamError> {
        let mut conn = self.connect(sentinel).await?;
        conn.write_all(
            &[encode::command(&[&b"SUBSCRIBE"[..], b"+switch-master"])],
            Some(self.dialer.connect_timeout),
        )
        .await?;
        // The subscription's confirmation.
        conn.read_reply(Some(self.dialer.connect_timeout)).await?;
        tracing::debug!(%sentinel, "following +switch-master");
        // A switch may have happened while no Sentinel was followed.
        if let Ok(address) = self.ask_one(sentinel).await {
            self.set_master(address);
        }
        let mut ping_sent = false;
        loop {
            match conn.read_reply(Some(WATCH_IDLE)).await {
                Ok((reply, _)) => {
                    ping_sent = false;
                    if let Some(address) = parse_switch(&reply, &self.master_name) {
                        self.set_master(address);
                    }
                }
                Err(UpstreamError::Timeout(_)) if !ping_sent => {
                    conn.write_all(
                        &[encode::command(&[&b"PING"[..]])],
                        Some(self.dialer.connect_timeout),
                    )
                    .await?;
                    ping_sent = true;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

fn bulk_strings(reply: &[u8]) -> Option<Vec<Bytes>> {
    let Ok(Some((OwnedFrame::Array(items), _))) = decode_resp2(reply) else {
        return None;
    };
    items
        .into_iter()
        .map(|item| match item {
            OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => Some(Bytes::from(b)),
            _ => None,
        })
        .collect()
}

fn join_address(host: &[u8], port: &[u8]) -> Option<String> {
    let host = std::str::from_utf8(host).ok()?;
    let port: u16 = std::str::from_utf8(port).ok()?.parse().ok()?;
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// `*2 $host $port` → `host:port`; `None` for a null or an error.
fn parse_master_address(reply: &[u8]) -> Option<String> {
    match bulk_strings(reply)?.as_slice() {
        [host, port] => join_address(host, port),
        _ => None,
    }
}

/// A `+switch-master` message for `name` → the new master's `host:port`. The payload is
/// `<name> <old-ip> <old-port> <new-ip> <new-port>`.
fn parse_switch(reply: &[u8], name: &str) -> Option<String> {
    let parts = bulk_strings(reply)?;
    let [kind, channel, payload] = parts.as_slice() else {
        return None;
    };
    if &kind[..] != b"message" || &channel[..] != b"+switch-master" {
        return None;
    }
    let fields: Vec<&[u8]> = payload.split(|&b| b == b' ').collect();
    match fields.as_slice() {
        [master, _, _, host, port] if *master == name.as_bytes() => join_address(host, port),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_address_replies() {
        assert_eq!(
            parse_master_address(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n").as_deref(),
            Some("127.0.0.1:6380")
        );
        assert_eq!(
            parse_master_address(b"*2\r\n$3\r\n::1\r\n$4\r\n6380\r\n").as_deref(),
            Some("[::1]:6380")
        );
        assert_eq!(parse_master_address(b"*-1\r\n"), None);
        assert_eq!(parse_master_address(b"-IDONTKNOW\r\n"), None);
        assert_eq!(
            parse_master_address(b"*2\r\n$1\r\nh\r\n$5\r\n99999\r\n"),
            None
        );
    }

    #[test]
    fn switch_master_messages() {
        let message = |payload: &str| {
            format!(
                "*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n${}\r\n{payload}\r\n",
                payload.len()
            )
        };
        let m = message("mymaster 127.0.0.1 6379 127.0.0.1 6380");
        assert_eq!(
            parse_switch(m.as_bytes(), "mymaster").as_deref(),
            Some("127.0.0.1:6380")
        );
        assert_eq!(parse_switch(m.as_bytes(), "other"), None);
        let short = message("mymaster 127.0.0.1 6379");
        assert_eq!(parse_switch(short.as_bytes(), "mymaster"), None);
        let confirm = b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n";
        assert_eq!(parse_switch(confirm, "mymaster"), None);
    }
}

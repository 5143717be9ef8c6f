//! The admin HTTP endpoint on `[metrics] address`, and what `/readyz` is made of.
//!
//! - `GET /metrics`: the Prometheus text exposition (format 0.0.4) of everything
//!   [`crate::metrics`] records, with the upstream-connection gauges refreshed first.
//! - `GET /healthz`: liveness. `200 ok` whenever this process can answer HTTP; it never
//!   looks at Redis (a Redis outage must not get the ambassador restarted).
//! - `GET /readyz`: readiness. `200 ok` only while the Redis listener is bound, no shutdown
//!   has begun, and the upstream answered the prober's last PING (recently);
//!   otherwise `503` and a one-line reason.
//! - `GET /startup`: `200 ok` from the first PING the upstream answered on (an
//!   authenticated connection) on, for good; `503` and the reason before.
//! - `POST /quitquitquit`: starts the same shutdown as SIGTERM, when `[metrics]
//!   quitquitquit` is on and the peer is on loopback (the pod's own containers); otherwise
//!   `403` and why. For a Kubernetes Job whose application tells its sidecar to go.
//! - Any other path: 404. A known path with another method: 405.
//!
//! The endpoint is HTTP/1.1 through hyper and is bounded so that a slow or broken HTTP
//! client cannot hurt the proxy: at most `max_connections` admin connections at once (more
//! are closed at accept), request headers of at most [`MAX_HEADER_BYTES`], no keep-alive,
//! and `request_timeout_ms` for the whole exchange (headers in, response out). Request
//! bodies are never read.
//!
//! The readiness prober lives here too: every `readiness_interval_ms` it checks a connection
//! out of the upstream pool — which authenticates it if it is new — and sends it `PING`.
//! It records results; it does not fix anything (the pool reconnects on its own).
//!
//! Nothing here logs or returns a secret: reasons are `UpstreamError` texts (which never
//! hold one), the upstream's own one-line reply to PING, and after an authentication
//! failure the key and path (or variable) of the password that was sent.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::session::Shared;
use crate::upstream::{AuthFailure, Upstream, UpstreamError};

/// Largest request head (request line and headers) accepted; over it hyper answers 431.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// hyper's read buffer cap (its minimum); a request body is never read into it.
const MAX_BUF_BYTES: usize = 8 * 1024;
/// How often the recorder drains recorded histogram samples when nobody scrapes, so
/// that their memory stays bounded.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Longest reason `/readyz` gives (an upstream's reply is cut to it): room for Redis's
/// WRONGPASS text and the key and path of the password that was sent.
const MAX_REASON_CHARS: usize = 400;

/// `PING redis-ambassador-probe`: its argument tells it apart from an application's PING in
/// what Redis shows (MONITOR, which the ambassador filters it from; the slow log).
const PING: &[u8] = b"*2\r\n$4\r\nPING\r\n$22\r\nredis-ambassador-probe\r\n";
const PROBE_REPLY: &[u8] = b"$22\r\nredis-ambassador-probe\r\n";

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The last readiness probe of the upstream.
#[derive(Debug, Clone)]
enum Probe {
    Never,
    Answered(Instant),
    Failed(String),
}

/// Whether the process should receive traffic: the inputs of `/readyz`.
#[derive(Debug)]
pub struct Readiness {
    listening: AtomicBool,
    shutting_down: AtomicBool,
    /// The upstream has answered a PING once (`/startup`); never unset.
    started: AtomicBool,
    probe: Mutex<Probe>,
    /// An answered probe older than this no longer counts (the prober is stuck or gone).
    stale_after: Duration,
}

impl Readiness {
    /// `stale_after`: how old the last answered PING may be and still count.
    pub fn new(stale_after: Duration) -> Readiness {
        Readiness {
            listening: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            started: AtomicBool::new(false),
            probe: Mutex::new(Probe::Never),
            stale_after,
        }
    }

    /// The Redis listener is bound.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    /// The Redis listener is closed.
    pub fn set_not_listening(&self) {
        self.listening.store(false, Ordering::Release);
    }

    /// A shutdown has begun: not ready from now on, whatever else holds.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// `Ok` when ready; otherwise the one-line reason.
    pub fn check(&self) -> Result<(), String> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err("shutting down".to_owned());
        }
        if !self.listening.load(Ordering::Acquire) {
            return Err("the Redis listener is not bound".to_owned());
        }
        let probe = match self.probe.lock() {
            Ok(probe) => probe.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        match probe {
            Probe::Never => Err("no upstream connection has answered PING yet".to_owned()),
            Probe::Failed(reason) => Err(reason),
            Probe::Answered(at) if at.elapsed() > self.stale_after => Err(format!(
                "the upstream last answered PING {} ms ago",
                at.elapsed().as_millis()
            )),
            Probe::Answered(_) => Ok(()),
        }
    }

    /// `Ok` once the upstream has answered a PING (on a connection that authenticated), and
    /// from then on; before, the reason, as `/readyz` gives it.
    pub fn startup(&self) -> Result<(), String> {
        if self.started.load(Ordering::Acquire) {
            return Ok(());
        }
        let probe = match self.probe.lock() {
            Ok(probe) => probe.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        Err(match probe {
            Probe::Failed(reason) => reason,
            _ => "no upstream connection has answered PING yet".to_owned(),
        })
    }

    /// Records a probe's result, logging only changes (not one line per second).
    fn record(&self, result: Result<(), String>) {
        let mut probe = match self.probe.lock() {
            Ok(probe) => probe,
            Err(poisoned) => poisoned.into_inner(),
        };
        match (&*probe, &result) {
            (Probe::Answered(_), Ok(())) => {}
            (_, Ok(())) => tracing::info!("upstream answers PING: ready"),
            (Probe::Failed(before), Err(reason)) if before == reason => {}
            (_, Err(reason)) => tracing::warn!(%reason, "upstream PING failed: not ready"),
        }
        if result.is_ok() {
            self.started.store(true, Ordering::Release);
        }
        *probe = match result {
            Ok(()) => Probe::Answered(Instant::now()),
            Err(reason) => Probe::Failed(reason),
        };
    }
}

/// Binds the admin address. Failing here is a start-up error.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot serve the admin endpoint ([metrics] address) on {address}: {e}"),
        )
    })
}

/// What the handlers read.
pub struct Admin {
    metrics: PrometheusHandle,
    shared: Arc<Shared>,
    readiness: Arc<Readiness>,
    /// Cancelled by `POST /quitquitquit`; `None` when `[metrics] quitquitquit` is off.
    quit: Option<CancellationToken>,
}

impl Admin {
    pub fn new(
        metrics: PrometheusHandle,
        shared: Arc<Shared>,
        readiness: Arc<Readiness>,
        quit: Option<CancellationToken>,
    ) -> Admin {
        Admin {
            metrics,
            shared,
            readiness,
            quit,
        }
    }

    /// Serves admin connections until `stop` fires. Also runs the recorder's upkeep.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        settings: config::Metrics,
        stop: CancellationToken,
    ) {
        let timeout = settings.request_timeout();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .max_header_size(MAX_HEADER_BYTES)
            .max_buf_size(MAX_BUF_BYTES)
            .keep_alive(false);
        let builder = Arc::new(builder);
        let permits = Arc::new(Semaphore::new(settings.max_connections));
        let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
        upkeep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                _ = upkeep.tick() => {
                    self.metrics.run_upkeep();
                    continue;
                }
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "admin connection refused: max_connections reached");
                drop(stream);
                continue;
            };
            let admin = self.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = admin.respond(&request, peer);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(timeout, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "admin connection failed"),
                    Err(_) => tracing::debug!(%peer, "admin connection timed out"),
                }
                drop(permit);
            });
        }
    }

    fn respond(&self, request: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        let allowed = match path {
            "/metrics" | "/healthz" | "/readyz" | "/startup" => "GET, HEAD",
            "/quitquitquit" => "POST",
            _ => return text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
        };
        let method = request.method();
        let method_ok = match allowed {
            "POST" => method == Method::POST,
            _ => method == Method::GET || method == Method::HEAD,
        };
        if !method_ok {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".to_owned(),
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            return response;
        }
        match path {
            "/metrics" => {
                self.shared.upstream.update_gauges();
                let mut response = text(StatusCode::OK, crate::metrics::render());
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
                response
            }
            "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
            "/readyz" => status_text(self.readiness.check()),
            "/startup" => status_text(self.readiness.startup()),
            _ => self.quit(peer),
        }
    }

    /// `POST /quitquitquit`: the first signal's shutdown, if enabled and asked from the pod.
    fn quit(&self, peer: SocketAddr) -> Response<Full<Bytes>> {
        let Some(quit) = &self.quit else {
            return text(
                StatusCode::FORBIDDEN,
                "/quitquitquit is disabled: set [metrics] quitquitquit = true to enable it\n"
                    .to_owned(),
            );
        };
        if !is_loopback_peer(peer.ip()) {
            tracing::warn!(%peer, "POST /quitquitquit refused: not from loopback");
            return text(
                StatusCode::FORBIDDEN,
                "/quitquitquit is only accepted from loopback (127.0.0.1 or ::1): from a \
                 container of the ambassador's own pod\n"
                    .to_owned(),
            );
        }
        if !quit.is_cancelled() {
            tracing::info!(%peer, "POST /quitquitquit: shutting down");
            quit.cancel();
        }
        text(StatusCode::OK, "shutting down\n".to_owned())
    }
}

/// Whether `ip` is a loopback address, an IPv4 one written as IPv6 (`::ffff:127.0.0.1`,
/// what a dual-stack listener on `[::]` sees) included.
fn is_loopback_peer(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// `200 ok`, or `503` and the one-line reason.
fn status_text(state: Result<(), String>) -> Response<Full<Bytes>> {
    match state {
        Ok(()) => text(StatusCode::OK, "ok\n".to_owned()),
        Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    response
}

/// The readiness prober's settings.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub interval: Duration,
    /// Bound on writing the PING and on reading its reply (each).
    pub ping_timeout: Duration,
    /// Which credentials the upstream connections present, said next to an
    /// authentication failure.
    pub credentials: Credentials,
}

/// Which credentials the upstream connections present, as the config names them (`user
/// `app`, password from [upstream] password_file /var/run/…`): an operator reading
/// `upstream authentication failed: WRONGPASS …` learns which Secret to check. Never a
/// value.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// What Redis (the master, a cluster node) is given.
    pub upstream: Option<String>,
    /// What the Sentinels are given.
    pub sentinel: Option<String>,
}

impl Credentials {
    /// `describe`: each password's key and path or variable (`RotatingSecret::describe`).
    pub fn new(
        upstream: &config::Upstream,
        password: Option<String>,
        sentinel_password: Option<String>,
    ) -> Credentials {
        let said = |user: Option<&str>, password: Option<String>| {
            password.map(|from| match user {
                Some(user) => format!("sent user `{user}` and the password from {from}"),
                None => format!("sent the password from {from}"),
            })
        };
        Credentials {
            upstream: said(upstream.username.as_deref(), password),
            sentinel: said(upstream.sentinel_username.as_deref(), sentinel_password),
        }
    }

    /// `error` as a one-line reason; an authentication failure says what was sent.
    fn reason(&self, error: &UpstreamError) -> String {
        let sent = match error {
            UpstreamError::AuthFailed(AuthFailure::Sentinel(_)) => self.sentinel.as_deref(),
            UpstreamError::AuthFailed(AuthFailure::Refused(_)) => self.upstream.as_deref(),
            _ => None,
        };
        match sent {
            Some(sent) => one_line(&format!("{error} ({sent})")),
            None => one_line(&error.to_string()),
        }
    }
}

impl ProbeSettings {
    pub fn new(config: &config::Config, credentials: Credentials) -> ProbeSettings {
        ProbeSettings {
            interval: config.metrics.readiness_interval(),
            ping_timeout: config.upstream.connect_timeout(),
            credentials,
        }
    }

    /// The age after which an answered PING no longer counts: two intervals plus the
    /// longest a probe can take (a pool wait, a write, a read).
    pub fn stale_after(&self, pool_wait: Duration) -> Duration {
        self.interval * 2 + pool_wait + self.ping_timeout * 2
    }
}

/// Probes the upstream every `settings.interval` until `stop` fires.
pub async fn probe_upstream(
    shared: Arc<Shared>,
    readiness: Arc<Readiness>,
    settings: ProbeSettings,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // Not raced against `stop`: every step is bounded, and dropping a checked-out
        // connection between the write and the read would return it to the pool dirty.
        let result = match &shared.cluster {
            Some(cluster) => ping_cluster(cluster, &settings).await,
            None => ping(&shared.upstream, &settings).await,
        };
        readiness.record(result);
    }
}

/// Cluster mode: the slot map is known, every slot has a master, and every master answers
/// PING.
async fn ping_cluster(
    cluster: &crate::cluster::Cluster,
    settings: &ProbeSettings,
) -> Result<(), String> {
    let topology = cluster
        .ready()
        .await
        .map_err(|e| settings.credentials.reason(&e))?;
    if topology.unassigned() > 0 {
        return Err(format!(
            "{} cluster slots have no master",
            topology.unassigned()
        ));
    }
    for master in &topology.masters {
        ping(&cluster.node(&master.address), settings)
            .await
            .map_err(|e| {
                let address = config::redact_address(&master.address);
                one_line(&format!("{address}: {e}"))
            })?;
    }
    Ok(())
}

/// One probe: a pooled connection (authenticated when it was opened) answers PING.
async fn ping(upstream: &Upstream, settings: &ProbeSettings) -> Result<(), String> {
    let reason = |e: UpstreamError| settings.credentials.reason(&e);
    let timeout = Some(settings.ping_timeout);
    let mut conn = upstream.get().await.map_err(reason)?;
    conn.write_all(&[Bytes::from_static(PING)], timeout)
        .await
        .map_err(reason)?;
    let (reply, _) = conn.read_reply(timeout).await.map_err(reason)?;
    if reply.as_ref() == PROBE_REPLY {
        return Ok(());
    }
    // The connection is clean (one request, one reply) but answers wrongly (for example
    // NOAUTH after the server's password changed): have the pool dial a fresh one.
    conn.broken = true;
    Err(one_line(&format!(
        "upstream answered PING with: {}",
        String::from_utf8_lossy(&reply)
    )))
}

/// `text` on one line (CR/LF and other controls as spaces), trimmed and cut to
/// [`MAX_REASON_CHARS`].
fn one_line(text: &str) -> String {
    let line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON_CHARS)
        .collect();
    line.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Readiness {
        let readiness = Readiness::new(Duration::from_secs(60));
        readiness.set_listening();
        readiness
    }

    #[test]
    fn readiness_needs_listener_and_an_answered_ping() {
        let readiness = Readiness::new(Duration::from_secs(60));
        assert!(readiness.check().unwrap_err().contains("listener"));
        readiness.set_listening();
        assert!(readiness.check().unwrap_err().contains("PING"));
        readiness.record(Ok(()));
        assert_eq!(readiness.check(), Ok(()));
        readiness.record(Err("upstream unavailable: connection refused".to_owned()));
        assert_eq!(
            readiness.check(),
            Err("upstream unavailable: connection refused".to_owned())
        );
        readiness.record(Ok(()));
        assert_eq!(readiness.check(), Ok(()));
    }

    #[test]
    fn startup_turns_ok_at_the_first_answer_and_stays() {
        let readiness = ready();
        assert!(readiness.startup().unwrap_err().contains("PING"));
        readiness.record(Err("upstream authentication failed: WRONGPASS".to_owned()));
        assert_eq!(
            readiness.startup(),
            Err("upstream authentication failed: WRONGPASS".to_owned())
        );
        readiness.record(Ok(()));
        assert_eq!(readiness.startup(), Ok(()));
        readiness.record(Err("upstream unavailable: connection refused".to_owned()));
        readiness.set_shutting_down();
        assert_eq!(readiness.startup(), Ok(()));
        assert!(readiness.check().is_err());
    }

    #[test]
    fn only_loopback_peers_may_quit() {
        for peer in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback_peer(peer.parse().unwrap()), "{peer}");
        }
        for peer in [
            "10.0.0.7",
            "192.0.2.2",
            "::ffff:10.0.0.7",
            "fd00::2",
            "0.0.0.0",
            "::",
        ] {
            assert!(!is_loopback_peer(peer.parse().unwrap()), "{peer}");
        }
    }

    #[test]
    fn shutting_down_wins() {
        let readiness = ready();
        readiness.record(Ok(()));
        readiness.set_shutting_down();
        assert_eq!(readiness.check(), Err("shutting down".to_owned()));
        readiness.record(Ok(()));
        assert_eq!(readiness.check(), Err("shutting down".to_owned()));
    }

    #[test]
    fn an_old_answer_is_stale() {
        let readiness = Readiness::new(Duration::ZERO);
        readiness.set_listening();
        readiness.record(Ok(()));
        std::thread::sleep(Duration::from_millis(2));
        assert!(
            readiness
                .check()
                .unwrap_err()
                .contains("last answered PING")
        );
    }

    #[test]
    fn an_authentication_failure_says_which_secret_was_sent() {
        let config: config::Config = "[upstream]\nmode = \"sentinel\"\naddress = \"s:1\"\n\
                                      master_name = \"m\"\nusername = \"app\"\n\
                                      password_file = \"/pw\"\n"
            .parse()
            .unwrap();
        let credentials = Credentials::new(
            &config.upstream,
            Some("[upstream] password_file /pw".to_owned()),
            Some("[upstream] sentinel_password_env SPW".to_owned()),
        );
        let refused = AuthFailure::Refused("WRONGPASS invalid username-password pair".into());
        assert_eq!(
            credentials.reason(&UpstreamError::AuthFailed(refused.clone())),
            "upstream authentication failed: WRONGPASS invalid username-password pair \
             (sent user `app` and the password from [upstream] password_file /pw)"
        );
        let sentinel = AuthFailure::Sentinel(Box::new(refused));
        assert!(
            credentials
                .reason(&UpstreamError::AuthFailed(sentinel))
                .ends_with("(sent the password from [upstream] sentinel_password_env SPW)")
        );
        assert_eq!(
            credentials.reason(&UpstreamError::Timeout(5)),
            "upstream timed out: no reply within 5 ms"
        );
    }

    #[test]
    fn reasons_are_one_short_line() {
        assert_eq!(
            one_line("upstream answered PING with: -LOADING x\r\n"),
            "upstream answered PING with: -LOADING x"
        );
        let long = "e".repeat(1000);
        assert_eq!(one_line(&long).len(), MAX_REASON_CHARS);
        assert!(!one_line("a\nb\rc\td").contains(['\n', '\r', '\t']));
    }
}

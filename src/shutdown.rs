//! The sidecar's end of life: the signals that start it and the drain that follows.
//!
//! On the first SIGTERM or SIGINT the process stops being *ready* at once (`/readyz`
//! answers 503, "shutting down") but goes on serving, and accepting, for `[shutdown]
//! drain_delay_ms` while clients are connected: the application beside the ambassador may
//! still be finishing requests, and Kubernetes takes a terminating pod out of its Service
//! endpoints asynchronously. The delay ends early once no client is connected (at once
//! when none was: a native sidecar is stopped after its application has exited), unless
//! `drain_delay_always` asks for all of it. Then the listener closes, every session's
//! `closing` token fires (an idle client is closed at once; a client in the middle of a
//! batch gets that batch's replies first, then is closed) and the sessions are awaited for
//! up to `[shutdown] grace_period_ms`. Sessions still running then (a slow upstream, and
//! later blocking or subscribed clients) are dropped when the process exits, with status 0.
//! An enabled `POST /quitquitquit` (see `admin`) starts the same sequence: it cancels the
//! token the first signal cancels.
//!
//! This module owns the order of those steps and nothing else: it does not know what a
//! session does with its token, and it never exits the process itself (`main` does, for a
//! second signal).

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Readiness;
use crate::config;

/// The process's termination signals, registered once so that none is lost between two
/// waits (after registration the default "terminate now" action no longer applies).
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers. Call it inside the runtime, before the listeners are bound,
    /// so that a signal arriving during start-up is handled like any other.
    pub fn register() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Waits for the next signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// The tokens and the tracker the accept loop and the sessions share with the drain.
#[derive(Clone, Default)]
pub struct Lifecycle {
    /// Fires when the accept loop must stop (the listener is then dropped).
    pub stop_accepting: CancellationToken,
    /// Every session's `closing` token: fires after the drain delay.
    pub closing: CancellationToken,
    /// Every session task, so the drain can wait for them.
    pub sessions: TaskTracker,
}

/// What the drain saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Sessions still running at the end of the grace period (dropped on exit).
    pub dropped_sessions: usize,
}

impl Lifecycle {
    pub fn new() -> Lifecycle {
        Lifecycle::default()
    }

    /// Runs the shutdown sequence after the first signal; `server` is the accept loop's
    /// task. Returns when every session has ended or the grace period is over.
    pub async fn drain(
        &self,
        settings: &config::Shutdown,
        readiness: &Readiness,
        server: JoinHandle<()>,
    ) -> Outcome {
        readiness.set_shutting_down();
        let clients = self.sessions.len();
        tracing::info!(
            drain_delay_ms = settings.drain_delay_ms,
            drain_delay_always = settings.drain_delay_always,
            grace_period_ms = settings.grace_period_ms,
            "draining {clients} clients; a second SIGTERM/SIGINT exits now"
        );
        // Closed now, so that `wait` sees the moment no session is left; sessions accepted
        // during the delay are still tracked.
        self.sessions.close();
        let started = Instant::now();
        if settings.drain_delay_always {
            tokio::time::sleep(settings.drain_delay()).await;
        } else {
            tokio::select! {
                () = tokio::time::sleep(settings.drain_delay()) => {}
                () = self.sessions.wait() => tracing::info!(
                    waited_ms = millis(started.elapsed()),
                    "no client connected: the drain delay ends"
                ),
            }
        }

        self.stop_accepting.cancel();
        if let Err(error) = server.await {
            tracing::error!(%error, "the accept loop ended abnormally");
        }
        readiness.set_not_listening();
        self.closing.cancel();
        let open = self.sessions.len();
        tracing::info!(
            sessions = open,
            "listener closed; closing clients as their in-flight commands finish"
        );

        let started = Instant::now();
        let finished = tokio::time::timeout(settings.grace_period(), self.sessions.wait())
            .await
            .is_ok();
        let dropped_sessions = if finished { 0 } else { self.sessions.len() };
        if finished {
            tracing::info!(
                waited_ms = millis(started.elapsed()),
                "every client closed; exiting"
            );
        } else {
            tracing::warn!(
                sessions = dropped_sessions,
                "grace period over; dropping the clients still open and exiting"
            );
        }
        Outcome { dropped_sessions }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

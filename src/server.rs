//! The listener: accepts clients, enforces `max_clients`, and spawns one session per
//! client. Over the limit a client gets Redis's `-ERR max number of clients reached` and is
//! closed (over TLS it is only closed, as Redis does). With TLS for clients the handshake
//! runs in the client's own task, bounded by `tls_handshake_timeout_ms`, so a slow client
//! never holds up the accept loop. It stops accepting (and drops the listener) when the
//! lifecycle's `stop_accepting` token fires; every session is spawned on the lifecycle's task tracker
//! with its `closing` token, so that the drain in `shutdown` can close and await them.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::net::ClientStream;
use crate::replies;
use crate::session::{Session, Shared};
use crate::shutdown::Lifecycle;
use crate::tls::ListenTls;

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<ListenTls>,
    max_clients: usize,
    lifecycle: Lifecycle,
) {
    let permits = Arc::new(Semaphore::new(max_clients));
    loop {
        let accepted = tokio::select! {
            _ = lifecycle.stop_accepting.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (mut stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if tls.is_some() {
                // No reply before a handshake: the client just sees the close.
                drop(stream);
                continue;
            }
            lifecycle.sessions.spawn(async move {
                let _ = stream.write_all(replies::MAX_CLIENTS).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let local = stream.local_addr().unwrap_or(peer);
        let shared = shared.clone();
        let closing = lifecycle.closing.clone();
        let span = tracing::debug_span!("client", %peer);
        let tls = tls.clone();
        lifecycle.sessions.spawn(
            async move {
                let stream = match tls {
                    None => ClientStream::Plain(stream),
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => ClientStream::Tls(Box::new(stream)),
                        Err(error) => {
                            // The client's fault (or a scanner): not the proxy's.
                            tracing::debug!(%error, "TLS handshake with a client failed");
                            crate::metrics::global().client_tls_failures.increment(1);
                            return;
                        }
                    },
                };
                tracing::debug!("connected");
                Session::new(shared, peer, local).run(stream, closing).await;
                tracing::debug!("disconnected");
                drop(permit);
            }
            .instrument(span),
        );
    }
}

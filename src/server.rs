//! The listener: accepts clients, enforces `max_clients`, and spawns one session per
//! client. Over the limit a client gets Redis's `-ERR max number of clients reached` and is
//! closed. It stops accepting (and drops the listener) when the lifecycle's
//! `stop_accepting` token fires; every session is spawned on the lifecycle's task tracker
//! with its `closing` token, so that the drain in `shutdown` can close and await them.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::replies;
use crate::session::{Session, Shared};
use crate::shutdown::Lifecycle;

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
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
            lifecycle.sessions.spawn(async move {
                let _ = stream.write_all(replies::MAX_CLIENTS).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let local = stream.local_addr().unwrap_or(peer);
        let session = Session::new(shared.clone(), peer, local);
        let closing = lifecycle.closing.clone();
        let span = tracing::debug_span!("client", %peer);
        lifecycle.sessions.spawn(
            async move {
                tracing::debug!("connected");
                session.run(stream, closing).await;
                tracing::debug!("disconnected");
                drop(permit);
            }
            .instrument(span),
        );
    }
}

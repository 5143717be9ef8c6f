//! A client that becomes a replica (SYNC, PSYNC: `redis-cli --rdb`, `redis-cli --replica`,
//! a replica behind the proxy, Redis's own test helpers). What follows the command is not
//! RESP replies — a bulk RDB payload without its closing CRLF (or an EOF-marked one), then
//! the replication stream, newlines as keep-alives — so the client is joined, byte for byte,
//! to an upstream connection of its own, which the proxy has authenticated. Nothing is
//! parsed and nothing is answered locally any more: both sides go on until either closes.
//! The connection never goes back to a pool.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::io::{ClientIo, READ_CHUNK};
use super::state::{Session, request_bytes};
use crate::metrics;
use crate::protocol::Request;
use crate::replies;

impl Session {
    /// Joins the client to a new upstream connection, sends it `request` (and whatever the
    /// client sent after it), and relays both ways until one side closes. `false`: the
    /// client is done (always, once the join was made); `true` when no connection could be
    /// had, the error was answered, and the session goes on.
    pub(super) async fn replicate(&mut self, request: Request, io: &mut ClientIo) -> bool {
        let conn = match self.upstream().dedicated().await {
            Ok(conn) => conn,
            Err(error) => {
                replies::proxy_error(&mut io.out, &error);
                return io.flush().await.is_ok();
            }
        };
        tracing::debug!(peer = %self.peer, "client became a replica; relaying its connection");
        // CLIENT LIST shows it as a replica (`S`, TYPE replica); CLIENT KILL ends it.
        let client = self.client.clone();
        client.set_flag(super::clients::flag::REPLICA, true);
        let (stream, buffered) = conn.into_raw();
        let (mut up_read, mut up_write) = stream.into_split();
        let mut first = BytesMut::from(&request_bytes(request)[..]);
        first.extend_from_slice(&io.inbuf);
        io.inbuf.clear();
        let ClientIo { reader, writer, .. } = io;
        if up_write.write_all(&first).await.is_err()
            || (!buffered.is_empty() && writer.send(&buffered).await.is_err())
        {
            return false;
        }
        let global = metrics::global();
        let to_upstream = async {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            loop {
                buf.clear();
                match reader.read_buf(&mut buf).await {
                    Ok(n) if n > 0 => global.bytes_in.increment(n as u64),
                    _ => return,
                }
                if up_write.write_all(&buf).await.is_err() {
                    return;
                }
            }
        };
        let to_client = async {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            loop {
                buf.clear();
                match up_read.read_buf(&mut buf).await {
                    Ok(n) if n > 0 => global.bytes_out.increment(n as u64),
                    _ => return,
                }
                if writer.send(&buf).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            () = to_upstream => {}
            () = to_client => {}
            () = client.killed() => {}
        }
        let _ = writer.shutdown().await;
        false
    }
}

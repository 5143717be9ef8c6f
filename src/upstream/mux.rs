//! The shared path: a few multiplexed upstream connections ("lanes") that carry the
//! batches of many clients at once. Whatever batches are waiting when a lane is ready to
//! write go to Redis in one vectored write; replies come back first-in first-out and are
//! handed to each batch as they arrive. This is pipelining across clients: fewer, larger
//! reads and writes for Redis and for the proxy, which is where a proxy can win back the
//! cost of its extra hop.
//!
//! Each lane is two tasks. The writer owns the write half and the connection's state
//! (database, protocol): before each batch it adds the SELECT/HELLO that batch needs, and
//! tells the reader how many replies to swallow and how many to pass on. The reader owns
//! the read half: it matches replies to batches in order, applies the command timeout while
//! a batch waits, and notices at once when an idle connection is closed by Redis, so the
//! next batch goes out on a fresh connection instead of a dead one. (Over TLS the idle
//! watch reads through rustls instead of polling socket readiness: see `net`.)
//!
//! Connection-bound work (MULTI, WATCH, blocking commands, pub/sub) never comes here: it
//! has dedicated connections (see `Pinned`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bb8::Pool;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::conn::{error_text, io_failure, transition, write_chunks};
use super::{ConnState, Health, Manager, UpstreamError};
use crate::net::{UpstreamRead, UpstreamWrite};
use crate::protocol::{ReplyFrame, ReplyScanner};
use crate::secret::RotatingSecret;

/// One client batch for a lane.
pub struct Job {
    /// The connection state the batch's first request needs, and the one it leaves.
    pub first: ConnState,
    pub last: ConnState,
    /// The batch leaves the database unknown (a transaction with a queued SELECT).
    pub db_unknown: bool,
    pub chunks: Vec<Bytes>,
    /// Replies the batch expects, its own state changes included.
    pub replies: usize,
    /// Where the replies go, in order; an error ends the stream. Unbounded, so a client
    /// that reads slowly never makes its lane wait: `pending` bounds it instead.
    pub reply_tx: mpsc::UnboundedSender<Result<(Bytes, ReplyFrame), UpstreamError>>,
    /// Reply bytes handed over and not yet taken by the session: over the client output
    /// limit, the lane stops delivering to this batch and tells it to close the client.
    pub pending: Arc<AtomicUsize>,
    /// Signalled when `pending` passes the limit (the session may be stuck writing).
    pub overflow: Arc<tokio::sync::Notify>,
}
/// Batches written together at most.
const MAX_JOBS_PER_WRITE: usize = 256;
const READ_CHUNK: usize = 16 * 1024;

struct Lane {
    tx: mpsc::Sender<Job>,
    /// Batches submitted and not yet fully answered: the least loaded lane gets the next.
    load: Arc<AtomicUsize>,
}

pub struct Mux {
    lanes: Vec<Lane>,
}

/// What a lane needs to open connections and to run them.
pub(super) struct LaneContext {
    /// Opens connections (`dedicated_connection`: outside the pool's accounting).
    pub pool: Pool<Manager>,
    /// The upstream password, whose generation tells when lanes should be recycled.
    pub password: Option<Arc<RotatingSecret>>,
    pub health: Arc<Health>,
    /// Where connections go: a lane whose connection belongs to an older generation
    /// (a master the Sentinels have replaced) reconnects before its next write.
    pub target: super::Target,
    pub command_timeout: Option<Duration>,
    pub max_reply_depth: usize,
    /// `[limits] client_output_hard_limit`.
    pub output_limit: usize,
}

impl Mux {
    pub(super) fn new(lanes: usize, context: LaneContext) -> Mux {
        let context = Arc::new(context);
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(1024);
                let load = Arc::new(AtomicUsize::new(0));
                tokio::spawn(run_lane(rx, context.clone(), load.clone()));
                Lane { tx, load }
            })
            .collect();
        Mux { lanes }
    }

    /// Queues a batch on the least loaded lane.
    pub async fn submit(&self, job: Job) -> Result<(), UpstreamError> {
        let lane = self
            .lanes
            .iter()
            .min_by_key(|lane| lane.load.load(Ordering::Relaxed))
            .ok_or_else(|| UpstreamError::Unavailable("no upstream lanes".to_owned()))?;
        lane.load.fetch_add(1, Ordering::Relaxed);
        if lane.tx.send(job).await.is_err() {
            lane.load.fetch_sub(1, Ordering::Relaxed);
            return Err(UpstreamError::Unavailable(
                "upstream lane stopped".to_owned(),
            ));
        }
        Ok(())
    }

    /// Batches in flight over all lanes.
    pub fn in_flight(&self) -> usize {
        self.lanes
            .iter()
            .map(|l| l.load.load(Ordering::Relaxed))
            .sum()
    }
}

/// What the writer tells the reader about each batch it wrote.
struct InFlight {
    swallow: usize,
    replies: usize,
    reply_tx: mpsc::UnboundedSender<Result<(Bytes, ReplyFrame), UpstreamError>>,
    pending: Arc<AtomicUsize>,
    overflow: Arc<tokio::sync::Notify>,
}

/// The writer's side of a live connection.
struct Writer {
    half: UpstreamWrite,
    state: ConnState,
    in_flight: mpsc::UnboundedSender<InFlight>,
    /// Set by the reader when the connection can no longer be used.
    dead: Arc<AtomicBool>,
    /// The password generation the connection logged in with.
    credentials: u64,
    /// The target generation the connection was made in.
    target: u64,
}

async fn run_lane(mut rx: mpsc::Receiver<Job>, context: Arc<LaneContext>, load: Arc<AtomicUsize>) {
    let mut writer: Option<Writer> = None;
    while let Some(first) = rx.recv().await {
        // Let the other clients that are ready right now hand in their batches too, so
        // they travel in this write: this one yield is what turns many clients' single
        // commands into one pipeline for Redis.
        // Alone on the lane, it goes at once: the yield would only add latency.
        if load.load(Ordering::Relaxed) > 1 {
            tokio::task::yield_now().await;
        }
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_WRITE {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if writer.as_ref().is_some_and(|w| {
            w.dead.load(Ordering::Acquire) || w.target != context.target.generation()
        }) {
            // Dead, or connected to a master that is one no more: replies still due on it
            // are read by its reader; nothing more is written to it.
            writer = None;
        }
        let live = match writer.as_mut() {
            Some(live) => live,
            None => match connect(&context, load.clone()).await {
                Ok(live) => writer.insert(live),
                Err(error) => {
                    for job in jobs {
                        let _ = job.reply_tx.send(Err(error.clone()));
                        load.fetch_sub(1, Ordering::Relaxed);
                    }
                    continue;
                }
            },
        };
        // After a password rotation, move to a connection made with the new credentials
        // at the first moment nothing is in flight on this one (gradual: one lane at a time,
        // as traffic allows). If the new connection fails, keep the old one.
        let rotated = context.password.as_ref().map(|p| p.generation());
        if let Some(generation) = rotated.filter(|g| *g != live.credentials) {
            if load.load(Ordering::Relaxed) == jobs.len() {
                match connect(&context, load.clone()).await {
                    Ok(fresh) => {
                        tracing::debug!("lane recycled after a password rotation");
                        *live = fresh;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "lane kept its connection after a rotation");
                        live.credentials = generation;
                    }
                }
            }
        }
        let mut chunks = Vec::with_capacity(jobs.len() * 2);
        for job in jobs {
            let mut prelude = BytesMut::new();
            let swallow = transition(&mut prelude, live.state, job.first);
            if swallow > 0 {
                chunks.push(prelude.freeze());
            }
            chunks.extend(job.chunks);
            live.state = job.last;
            if job.db_unknown {
                live.state.db = ConnState::UNKNOWN_DB;
            }
            let in_flight = InFlight {
                swallow,
                replies: job.replies,
                reply_tx: job.reply_tx,
                pending: job.pending,
                overflow: job.overflow,
            };
            if let Err(unsent) = live.in_flight.send(in_flight) {
                // The reader is gone: this batch was not written.
                let _ = unsent
                    .0
                    .reply_tx
                    .send(Err(UpstreamError::Lost("connection closed".to_owned())));
                load.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let write = write_chunks(&mut live.half, &chunks);
        let result = match context.command_timeout {
            Some(limit) => tokio::time::timeout(limit, write)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
            None => write.await,
        };
        if let Err(error) = result {
            tracing::debug!(%error, "upstream write failed");
            // The reader fails what is in flight when the connection closes.
            live.dead.store(true, Ordering::Release);
            writer = None;
        }
    }
}

/// Opens a connection and starts its reader.
async fn connect(context: &LaneContext, load: Arc<AtomicUsize>) -> Result<Writer, UpstreamError> {
    if let Some(error) = context.health.backing_off() {
        return Err(error);
    }
    let conn = match context.pool.dedicated_connection().await {
        Ok(conn) => conn,
        Err(error) => {
            if error.is_connect_failure() {
                context.health.connect_failed(error.clone());
            }
            return Err(error);
        }
    };
    let state = conn.state;
    let credentials = conn.credentials;
    let target = conn.target;
    let (stream, rbuf) = conn.into_parts();
    let (read_half, write_half) = stream.into_split();
    let (in_flight_tx, in_flight_rx) = mpsc::unbounded_channel();
    let dead = Arc::new(AtomicBool::new(false));
    tokio::spawn(run_reader(
        read_half,
        rbuf,
        ReplyScanner::new(context.max_reply_depth),
        in_flight_rx,
        dead.clone(),
        load,
        (context.command_timeout, context.output_limit),
    ));
    Ok(Writer {
        half: write_half,
        state,
        in_flight: in_flight_tx,
        dead,
        credentials,
        target,
    })
}

struct Reader {
    half: UpstreamRead,
    rbuf: BytesMut,
    scanner: ReplyScanner,
    timeout: Option<Duration>,
}

impl Reader {
    /// The next reply, skipping RESP3 push frames (none are expected on a shared lane).
    async fn next(&mut self) -> Result<(Bytes, ReplyFrame), UpstreamError> {
        loop {
            match self.scanner.scan(&self.rbuf) {
                Ok(Some(frame)) => {
                    let bytes = crate::net::take_frame(&mut self.rbuf, frame.len);
                    if frame.push {
                        continue;
                    }
                    return Ok((bytes, frame));
                }
                Ok(None) => {}
                Err(error) => return Err(UpstreamError::BadReply(error)),
            }
            crate::net::shrink_if_empty(&mut self.rbuf);
            self.rbuf.reserve(READ_CHUNK);
            let read = self.half.read_buf(&mut self.rbuf);
            let result = match self.timeout {
                Some(limit) => tokio::time::timeout(limit, read)
                    .await
                    .map_err(|_| UpstreamError::Timeout(limit.as_millis() as u64))?,
                None => read.await,
            };
            match result {
                Ok(0) => return Err(UpstreamError::Lost("closed by the server".to_owned())),
                Ok(_) => {}
                Err(error) => return Err(io_failure("read", &error)),
            }
        }
    }
}

async fn run_reader(
    half: UpstreamRead,
    rbuf: BytesMut,
    scanner: ReplyScanner,
    mut in_flight: mpsc::UnboundedReceiver<InFlight>,
    dead: Arc<AtomicBool>,
    load: Arc<AtomicUsize>,
    (timeout, output_limit): (Option<Duration>, usize),
) {
    let mut reader = Reader {
        half,
        rbuf,
        scanner,
        timeout,
    };
    let mut failure: Option<UpstreamError> = None;
    loop {
        let item = if failure.is_some() {
            in_flight.recv().await
        } else {
            tokio::select! {
                // The writer registers a batch before writing it, so reply bytes never
                // arrive before their batch is here: polling it first keeps them apart.
                biased;
                item = in_flight.recv() => item,
                // Idle: anything from Redis now (its close, above all) ends the connection.
                // A reply may land between the two polls of this select (its batch then
                // arrives next): bytes are kept for it.
                closed = reader.half.idle_read(&mut reader.rbuf) => {
                    if closed {
                        tracing::debug!("idle upstream connection closed");
                        dead.store(true, Ordering::Release);
                        failure = Some(UpstreamError::Lost("closed by the server".to_owned()));
                    }
                    continue;
                }
            }
        };
        let Some(item) = item else {
            return; // The writer moved on to a new connection.
        };
        if let Some(error) = &failure {
            let _ = item.reply_tx.send(Err(error.clone()));
            load.fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        let mut error = None;
        for _ in 0..item.swallow {
            match reader.next().await {
                Ok((reply, frame)) if frame.error => {
                    error = Some(UpstreamError::Lost(format!(
                        "upstream refused a connection-state change (SELECT/HELLO): {}",
                        error_text(&reply)
                    )));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let mut client_gone = false;
        if error.is_none() {
            for _ in 0..item.replies {
                match reader.next().await {
                    Ok(reply) if !client_gone => {
                        let size = reply.0.len();
                        if item.pending.fetch_add(size, Ordering::AcqRel) + size > output_limit {
                            // The client is not reading: never wait for it (that would hold
                            // the lane), tell its session to close it, drop the rest.
                            let limit = UpstreamError::ClientOutputLimit(output_limit);
                            let _ = item.reply_tx.send(Err(limit));
                            item.overflow.notify_one();
                            client_gone = true;
                        } else if item.reply_tx.send(Ok(reply)).is_err() {
                            // The client left: its replies are read and dropped.
                            client_gone = true;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
        }
        if let Some(error) = error {
            tracing::debug!(%error, "upstream lane failed");
            let _ = item.reply_tx.send(Err(error.clone()));
            dead.store(true, Ordering::Release);
            failure = Some(error);
        }
        load.fetch_sub(1, Ordering::Relaxed);
    }
}

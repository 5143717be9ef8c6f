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
//! A batch goes to the first lane whose oldest batch in flight has waited less than
//! `STALL` for its replies (in practice the first lane): one lane carries everything, so
//! Redis gets the largest pipelines and spends the least per request. The others take over
//! only while a slow reply (a large value on its way back, a blocked Redis) holds the
//! first up, so that the clients behind it are not held up with it.
//!
//! Replies are handed to each client's [`ReplySlot`](super::slot::ReplySlot), which is
//! reused from one batch to the next: nothing is allocated per batch for them.
//!
//! Connection-bound work (MULTI, WATCH, blocking commands, pub/sub) never comes here: it
//! has dedicated connections (see `Pinned`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bb8::Pool;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::conn::ConnState;
use super::conn::{ReplyBuffer, push_transition, write_chunks};
use super::error::{LostReason, UnavailableReason, UpstreamError};
use super::manager::{Health, Manager, Target};
use super::slot::Ticket;
use crate::net::{UpstreamRead, UpstreamWrite};
use crate::protocol::ReplyFrame;
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
    /// Which of those replies answer state changes woven into the batch (SELECT, HELLO
    /// between two of its requests), in order: one Redis refuses leaves the connection in
    /// another state than the writer thinks (see `Reader::poison`).
    pub woven: Vec<usize>,
    /// The batch may keep Redis busy for long (see `command::may_hold_lane`): later
    /// batches go to another lane while it is in flight.
    pub slow: bool,
    /// Where the replies go, in order, an error ending them: the client's slot, which
    /// bounds what it holds by the client output limit (a client that reads slowly never
    /// makes its lane wait).
    pub ticket: Ticket,
}
/// Batches written together at most.
const MAX_JOBS_PER_WRITE: usize = 256;

/// A lane whose oldest batch in flight has waited this long for its replies is passed
/// over for new batches.
const STALL: Duration = Duration::from_millis(2);

struct Lane {
    tx: mpsc::Sender<Job>,
    /// Batches submitted and not yet fully answered: when every lane is stalled, the
    /// least loaded gets the next.
    load: Arc<AtomicUsize>,
    /// When the lane's oldest batch in flight began waiting for its replies (see
    /// `clock`), 0 when none waits.
    front: Arc<AtomicU64>,
    /// Slow batches (see `Job::slow`) submitted and not yet answered.
    slow: Arc<AtomicUsize>,
}

/// Microseconds since the first call, plus one: 0 is left to mean "never".
fn clock() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let elapsed = EPOCH.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX - 1) + 1
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
    pub target: Target,
    pub command_timeout: Option<Duration>,
    /// How long a lane's connect waits for the reconnect backoff to end.
    pub connect_timeout: Duration,
    /// `[limits] client_output_hard_limit`.
    pub output_limit: usize,
}

impl Mux {
    pub(super) fn new(lanes: usize, context: LaneContext) -> Mux {
        let context = Arc::new(context);
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(1024);
                let counters = Counters::default();
                tokio::spawn(run_lane(rx, context.clone(), counters.clone()));
                Lane {
                    tx,
                    load: counters.load,
                    front: counters.front,
                    slow: counters.slow,
                }
            })
            .collect();
        Mux { lanes }
    }

    /// Queues a batch on the first lane that is not stalled (see `STALL`), or, when all
    /// are, on the least loaded.
    pub async fn submit(&self, mut job: Job) -> Result<(), UpstreamError> {
        let Some(lane) = self.pick() else {
            job.ticket.close();
            return Err(UnavailableReason::NoLanes.into());
        };
        let slow = job.slow;
        lane.load.fetch_add(1, Ordering::Relaxed);
        if slow {
            lane.slow.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(mut unsent) = lane.tx.send(job).await {
            lane.load.fetch_sub(1, Ordering::Relaxed);
            if slow {
                lane.slow.fetch_sub(1, Ordering::Relaxed);
            }
            unsent.0.ticket.close();
            return Err(UnavailableReason::LaneStopped.into());
        }
        Ok(())
    }

    fn pick(&self) -> Option<&Lane> {
        let mut now = None;
        let stall = STALL.as_micros() as u64;
        let free = self.lanes.iter().find(|lane| {
            let front = lane.front.load(Ordering::Relaxed);
            lane.slow.load(Ordering::Relaxed) == 0
                && (front == 0 || now.get_or_insert_with(clock).saturating_sub(front) < stall)
        });
        free.or_else(|| {
            self.lanes
                .iter()
                .min_by_key(|lane| lane.load.load(Ordering::Relaxed))
        })
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
    woven: Vec<usize>,
    slow: bool,
    ticket: Ticket,
}

/// What a lane's tasks share with the `Mux`: its load and when its front batch began
/// waiting (see `Lane`).
#[derive(Clone, Default)]
struct Counters {
    load: Arc<AtomicUsize>,
    front: Arc<AtomicU64>,
    slow: Arc<AtomicUsize>,
}

impl Counters {
    /// A batch is over (answered, or failed).
    fn done(&self, slow: bool) {
        self.load.fetch_sub(1, Ordering::Relaxed);
        if slow {
            self.slow.fetch_sub(1, Ordering::Relaxed);
        }
    }
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

async fn run_lane(mut rx: mpsc::Receiver<Job>, context: Arc<LaneContext>, counters: Counters) {
    let load = &counters.load;
    let mut writer: Option<Writer> = None;
    while let Some(first) = rx.recv().await {
        let jobs = gather(first, &mut rx, load).await;
        if writer.as_ref().is_some_and(|w| {
            w.dead.load(Ordering::Acquire) || w.target != context.target.generation()
        }) {
            // Dead, or connected to a master that is one no more: replies still due on it
            // are read by its reader; nothing more is written to it.
            writer = None;
        }
        let live = match writer.as_mut() {
            Some(live) => live,
            None => match connect(&context, counters.clone()).await {
                Ok(live) => writer.insert(live),
                Err(error) => {
                    for mut job in jobs {
                        job.ticket.fail(error.clone());
                        counters.done(job.slow);
                    }
                    continue;
                }
            },
        };
        if load.load(Ordering::Relaxed) == jobs.len() {
            live.recycle_if_rotated(&context, &counters).await;
        }
        let chunks = live.register(jobs, &counters);
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

/// `first` and the batches that other clients hand in meanwhile, so they travel in one
/// write: this one yield is what turns many clients' single commands into one pipeline
/// for Redis. Alone on the lane, a batch goes at once: the yield would only add latency.
async fn gather(first: Job, rx: &mut mpsc::Receiver<Job>, load: &AtomicUsize) -> Vec<Job> {
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
    jobs
}

impl Writer {
    /// After a password rotation, moves to a connection made with the new credentials
    /// (called when nothing is in flight on this one: gradual, one lane at a time, as
    /// traffic allows). If the new connection fails, keeps the old one.
    async fn recycle_if_rotated(&mut self, context: &LaneContext, counters: &Counters) {
        let rotated = context.password.as_ref().map(|p| p.generation());
        let Some(generation) = rotated.filter(|g| *g != self.credentials) else {
            return;
        };
        match connect(context, counters.clone()).await {
            Ok(fresh) => {
                tracing::debug!("lane recycled after a password rotation");
                *self = fresh;
            }
            Err(error) => {
                tracing::debug!(%error, "lane kept its connection after a rotation");
                self.credentials = generation;
            }
        }
    }

    /// Tells the reader about each batch, in order, and returns the bytes to write: each
    /// batch behind the SELECT/HELLO it needs.
    fn register(&mut self, jobs: Vec<Job>, counters: &Counters) -> Vec<Bytes> {
        let mut chunks = Vec::with_capacity(jobs.len() * 2);
        for job in jobs {
            let swallow = push_transition(&mut chunks, self.state, job.first);
            chunks.extend(job.chunks);
            self.state = job.last;
            if job.db_unknown {
                self.state.db = ConnState::UNKNOWN_DB;
            }
            let in_flight = InFlight {
                swallow,
                replies: job.replies,
                woven: job.woven,
                slow: job.slow,
                ticket: job.ticket,
            };
            if let Err(unsent) = self.in_flight.send(in_flight) {
                // The reader is gone: this batch was not written.
                let InFlight {
                    mut ticket, slow, ..
                } = unsent.0;
                ticket.fail(LostReason::ClosedBeforeSent.into());
                counters.done(slow);
            }
        }
        chunks
    }
}

/// Opens a connection and starts its reader.
async fn connect(context: &LaneContext, counters: Counters) -> Result<Writer, UpstreamError> {
    if let Some(error) = context.health.wait_for_retry(context.connect_timeout).await {
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
    let (stream, replies) = conn.into_parts();
    let (read_half, write_half) = stream.into_split();
    let (in_flight_tx, in_flight_rx) = mpsc::unbounded_channel();
    let dead = Arc::new(AtomicBool::new(false));
    let reader = Reader {
        half: read_half,
        replies,
        in_flight: in_flight_rx,
        dead: dead.clone(),
        counters,
        timeout: context.command_timeout,
        output_limit: context.output_limit,
        failure: None,
        poison: None,
    };
    tokio::spawn(reader.run());
    Ok(Writer {
        half: write_half,
        state,
        in_flight: in_flight_tx,
        dead,
        credentials,
        target,
    })
}

/// The reader's side of a live connection: matches replies to batches in order.
struct Reader {
    half: UpstreamRead,
    replies: ReplyBuffer,
    in_flight: mpsc::UnboundedReceiver<InFlight>,
    /// Set here when the connection can no longer be used.
    dead: Arc<AtomicBool>,
    counters: Counters,
    /// The command timeout, while a batch waits.
    timeout: Option<Duration>,
    /// `[limits] client_output_hard_limit`.
    output_limit: usize,
    /// Once the connection failed: the error every later batch gets.
    failure: Option<UpstreamError>,
    /// Redis refused a state change on this connection (`BUSY` while a script runs): its
    /// database or protocol is not what the writer assumed for every batch written after
    /// it, so each of their replies is that refusal instead (the command's reply, as Redis
    /// gives it while busy), and the writer moves to a new connection.
    poison: Option<(Bytes, ReplyFrame)>,
}

impl Reader {
    async fn run(mut self) {
        // `None`: the writer moved on to a new connection.
        while let Some(mut item) = self.next_batch().await {
            self.counters.front.store(clock(), Ordering::Relaxed);
            let result = match &self.failure {
                Some(error) => Err(error.clone()),
                None => self.answer(&mut item).await,
            };
            self.counters.front.store(0, Ordering::Relaxed);
            match result {
                Ok(()) => item.ticket.close(),
                Err(error) => {
                    if self.failure.is_none() {
                        tracing::debug!(%error, "upstream lane failed");
                        self.dead.store(true, Ordering::Release);
                        self.failure = Some(error.clone());
                    }
                    item.ticket.fail(error);
                }
            }
            self.counters.done(item.slow);
        }
    }

    /// The next batch written. While none is in flight, anything from Redis (its close,
    /// above all) ends the connection.
    async fn next_batch(&mut self) -> Option<InFlight> {
        if self.failure.is_some() {
            return self.in_flight.recv().await;
        }
        loop {
            tokio::select! {
                // The writer registers a batch before writing it, so reply bytes never
                // arrive before their batch is here: polling it first keeps them apart.
                biased;
                item = self.in_flight.recv() => return item,
                // A reply may land between the two polls of this select (its batch then
                // arrives next): bytes are kept for it.
                closed = self.half.idle_read(&mut self.replies.buf) => {
                    if closed {
                        tracing::debug!("idle upstream connection closed");
                        self.dead.store(true, Ordering::Release);
                        self.failure = Some(LostReason::ClosedByServer.into());
                        return self.in_flight.recv().await;
                    }
                }
            }
        }
    }

    /// Reads one batch's replies: swallows those of its state changes, hands the rest
    /// over. Fails when the connection does (the batch is then told by the caller).
    async fn answer(&mut self, item: &mut InFlight) -> Result<(), UpstreamError> {
        for _ in 0..item.swallow {
            let reply = self
                .replies
                .read_reply(&mut self.half, self.timeout)
                .await?;
            if reply.1.error {
                self.poisoned_by(reply);
            }
        }
        let mut woven = item.woven.iter().peekable();
        let mut client_gone = false;
        for index in 0..item.replies {
            let reply = self
                .replies
                .read_reply(&mut self.half, self.timeout)
                .await?;
            let reply = match &self.poison {
                Some(poison) => poison.clone(),
                None => reply,
            };
            if woven.next_if(|&&at| at == index).is_some() && reply.1.error {
                // Shown to the batch as it is: it answers the rest itself.
                self.poisoned_by(reply.clone());
            }
            // A client that is not reading passes its output limit: never wait for it
            // (that would hold the lane); it is told to close, the rest is dropped. So is
            // everything for a client that left.
            if !client_gone && !item.ticket.deliver(reply, self.output_limit) {
                client_gone = true;
            }
        }
        Ok(())
    }

    /// A state change was refused (see `poison`): the first refusal answers from now on.
    fn poisoned_by(&mut self, reply: (Bytes, ReplyFrame)) {
        if self.poison.is_none() {
            tracing::debug!(reply = %super::conn::error_text(&reply.0),
                "upstream refused a state change; lane moves to a new connection");
            self.dead.store(true, Ordering::Release);
            self.poison = Some(reply);
        }
    }
}

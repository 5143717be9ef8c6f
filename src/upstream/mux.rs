//! The shared path: a few multiplexed upstream connections ("lanes") that carry the
//! batches of many clients at once. Whatever batches are waiting when a lane is ready to
//! write go to Redis in one vectored write; replies come back first-in first-out and are
//! handed to each batch as they arrive. This is pipelining across clients: fewer, larger
//! reads and writes for Redis and for the proxy, which is where a proxy can win back the
//! cost of its extra hop.
//!
//! Each lane is two tasks. The writer owns the write half and the connection's state
//! (database, protocol): before each batch it adds the SELECT/HELLO that batch needs, and
//! queues for the reader how many replies to swallow and how many to pass on (a queue the
//! reader looks at when bytes arrive: registering a batch wakes no one). The reader owns
//! the read half: it matches replies to batches in order, and notices at once when an idle
//! connection is closed by Redis, so the next batch goes out on a fresh connection instead
//! of a dead one. (Over TLS the idle watch reads through rustls instead of polling socket
//! readiness: see `net`.) The command timeout is a watchdog per lane, a few ticks per
//! timeout, which closes a connection whose oldest batch has had no reply for that long:
//! no timer is set per batch.
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

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use bb8::Pool;
use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

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
                if let Some(timeout) = context.command_timeout {
                    tokio::spawn(watchdog(tx.downgrade(), counters.links.clone(), timeout));
                }
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
/// waiting (see `Lane`), and the lane's connections (for the watchdog).
#[derive(Clone, Default)]
struct Counters {
    load: Arc<AtomicUsize>,
    front: Arc<AtomicU64>,
    slow: Arc<AtomicUsize>,
    links: Arc<Mutex<Vec<Weak<Link>>>>,
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

/// What a connection's writer and reader share.
struct Link {
    queue: Mutex<Queue>,
    /// Wakes the reader when the writer has left (it ends once the queue is empty).
    wake: Notify,
    /// Set when the connection can no longer be used.
    dead: AtomicBool,
    /// When the oldest batch queued began waiting (see `clock`), 0 when none waits.
    front: AtomicU64,
    /// Replies read: the watchdog's sign of progress, and what it last saw of it.
    replies: AtomicU64,
    seen_replies: AtomicU64,
    seen_at: AtomicU64,
    /// The watchdog closed the connection: its failure is a timeout.
    timed_out: AtomicBool,
    /// The socket underneath, for the watchdog to close (`None`: it could not be had).
    socket: Option<OwnedFd>,
}

/// Batches written and not yet answered, in order.
#[derive(Default)]
struct Queue {
    items: VecDeque<InFlight>,
    writer_gone: bool,
    /// The reader failed: batches are failed at once instead of queued.
    failed: bool,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while the lock is held; a poisoned lock still holds valid state.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The command timeout passed with no reply: the connection is closed under the
    /// reader, which then fails what is in flight with a timeout.
    fn time_out(&self) {
        if self.timed_out.swap(true, Ordering::AcqRel) {
            return;
        }
        self.dead.store(true, Ordering::Release);
        if let Some(socket) = &self.socket {
            let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The command timeout of a lane's connections: every few ticks per timeout, a connection
/// whose oldest batch has waited that long since its last reply is closed (see
/// `Link::time_out`). Ends with the lane.
async fn watchdog(
    lane: mpsc::WeakSender<Job>,
    links: Arc<Mutex<Vec<Weak<Link>>>>,
    timeout: Duration,
) {
    let tick = (timeout / 4).clamp(Duration::from_millis(5), Duration::from_millis(250));
    let limit = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX);
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if lane.strong_count() == 0 {
            return;
        }
        let now = clock();
        let mut links = links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        links.retain(|link| {
            let Some(link) = link.upgrade() else {
                return false;
            };
            let replies = link.replies.load(Ordering::Relaxed);
            if link.seen_replies.swap(replies, Ordering::Relaxed) != replies {
                link.seen_at.store(now, Ordering::Relaxed);
            }
            let front = link.front.load(Ordering::Relaxed);
            let since = front.max(link.seen_at.load(Ordering::Relaxed));
            if front != 0 && now.saturating_sub(since) >= limit {
                link.time_out();
            }
            true
        });
    }
}

/// The writer's side of a live connection.
struct Writer {
    half: UpstreamWrite,
    state: ConnState,
    link: Arc<Link>,
    /// The password generation the connection logged in with.
    credentials: u64,
    /// The target generation the connection was made in.
    target: u64,
}

impl Drop for Writer {
    /// Nothing more is written: the reader reads what is due, then ends.
    fn drop(&mut self) {
        self.link.lock().writer_gone = true;
        self.link.wake.notify_one();
    }
}

async fn run_lane(mut rx: mpsc::Receiver<Job>, context: Arc<LaneContext>, counters: Counters) {
    let load = &counters.load;
    let mut writer: Option<Writer> = None;
    // Reused from one write to the next.
    let mut jobs = Vec::new();
    let mut chunks = Vec::new();
    while let Some(first) = rx.recv().await {
        gather(first, &mut rx, load, &mut jobs).await;
        if writer.as_ref().is_some_and(|w| {
            w.link.dead.load(Ordering::Acquire) || w.target != context.target.generation()
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
                    for mut job in jobs.drain(..) {
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
        live.register(&mut jobs, &mut chunks, &counters);
        // A write Redis does not take is caught by the watchdog (the batch waits).
        if let Err(error) = write_chunks(&mut live.half, &chunks).await {
            tracing::debug!(%error, "upstream write failed");
            // The reader fails what is in flight when the connection closes.
            live.link.dead.store(true, Ordering::Release);
            writer = None;
        }
        chunks.clear();
        if jobs.capacity() > KEEP_JOBS {
            jobs = Vec::new();
            chunks = Vec::new();
        }
    }
}

/// The job and chunk lists a lane keeps between writes, at most.
const KEEP_JOBS: usize = 64;

/// `first` and the batches that other clients hand in meanwhile, so they travel in one
/// write: this one yield is what turns many clients' single commands into one pipeline
/// for Redis. Alone on the lane, a batch goes at once: the yield would only add latency.
async fn gather(first: Job, rx: &mut mpsc::Receiver<Job>, load: &AtomicUsize, jobs: &mut Vec<Job>) {
    if load.load(Ordering::Relaxed) > 1 {
        tokio::task::yield_now().await;
    }
    jobs.push(first);
    while jobs.len() < MAX_JOBS_PER_WRITE {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
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

    /// Queues each batch for the reader, in order, and puts the bytes to write in
    /// `chunks`: each batch behind the SELECT/HELLO it needs. On a connection whose reader
    /// failed, the batches fail at once and nothing is to be written.
    fn register(&mut self, jobs: &mut Vec<Job>, chunks: &mut Vec<Bytes>, counters: &Counters) {
        let mut queue = self.link.lock();
        if queue.failed {
            drop(queue);
            for mut job in jobs.drain(..) {
                job.ticket.fail(LostReason::ClosedBeforeSent.into());
                counters.done(job.slow);
            }
            return;
        }
        // The first batch to wait starts the clock; one the reader is answering keeps it.
        if queue.items.is_empty()
            && !jobs.is_empty()
            && self.link.front.load(Ordering::Relaxed) == 0
        {
            let now = clock();
            self.link.front.store(now, Ordering::Relaxed);
            counters.front.store(now, Ordering::Relaxed);
        }
        for job in jobs.drain(..) {
            let swallow = push_transition(chunks, self.state, job.first);
            chunks.extend(job.chunks);
            self.state = job.last;
            if job.db_unknown {
                self.state.db = ConnState::UNKNOWN_DB;
            }
            queue.items.push_back(InFlight {
                swallow,
                replies: job.replies,
                woven: job.woven,
                slow: job.slow,
                ticket: job.ticket,
            });
        }
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
    let socket = match stream.dup_socket() {
        Ok(socket) => Some(socket),
        Err(error) => {
            tracing::debug!(%error, "no command timeout on this lane connection");
            None
        }
    };
    let (read_half, write_half) = stream.into_split();
    let link = Arc::new(Link {
        queue: Mutex::new(Queue::default()),
        wake: Notify::new(),
        dead: AtomicBool::new(false),
        front: AtomicU64::new(0),
        replies: AtomicU64::new(0),
        seen_replies: AtomicU64::new(0),
        seen_at: AtomicU64::new(0),
        timed_out: AtomicBool::new(false),
        socket,
    });
    if context.command_timeout.is_some() {
        counters
            .links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Arc::downgrade(&link));
    }
    let reader = Reader {
        half: read_half,
        replies,
        link: link.clone(),
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
        link,
        credentials,
        target,
    })
}

/// The reader's side of a live connection: matches replies to batches in order.
struct Reader {
    half: UpstreamRead,
    replies: ReplyBuffer,
    link: Arc<Link>,
    counters: Counters,
    /// The command timeout (for the error the watchdog's close becomes).
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
            let result = match &self.failure {
                Some(error) => Err(error.clone()),
                None => self.answer(&mut item).await,
            };
            {
                // The next batch (if any) waits from now.
                let queue = self.link.lock();
                let front = if queue.items.is_empty() { 0 } else { clock() };
                self.link.front.store(front, Ordering::Relaxed);
                self.counters.front.store(front, Ordering::Relaxed);
            }
            match result {
                Ok(()) => item.ticket.close(),
                Err(error) => {
                    let error = self.fail(error);
                    item.ticket.fail(error);
                }
            }
            self.counters.done(item.slow);
        }
    }

    /// The connection failed: the first failure is what every batch still queued gets
    /// (a timeout if the watchdog closed it), and later batches are failed by the writer.
    fn fail(&mut self, error: UpstreamError) -> UpstreamError {
        if let Some(failure) = &self.failure {
            return failure.clone();
        }
        let error = match self.timeout {
            Some(limit) if self.link.timed_out.load(Ordering::Acquire) => {
                UpstreamError::Timeout(limit.as_millis() as u64)
            }
            _ => error,
        };
        tracing::debug!(%error, "upstream lane failed");
        self.link.dead.store(true, Ordering::Release);
        self.link.lock().failed = true;
        self.failure = Some(error.clone());
        error
    }

    /// The next batch written, once its replies begin to arrive (or at once after a
    /// failure). While none is queued, anything from Redis (its close, above all) ends
    /// the connection.
    async fn next_batch(&mut self) -> Option<InFlight> {
        loop {
            {
                let mut queue = self.link.lock();
                if let Some(item) = queue.items.pop_front() {
                    return Some(item);
                }
                if queue.writer_gone {
                    return None;
                }
            }
            if self.failure.is_some() {
                // Nothing more is queued (see `Writer::register`): wait for the writer
                // to leave.
                self.link.wake.notified().await;
                continue;
            }
            tokio::select! {
                biased;
                () = self.link.wake.notified() => {}
                // The writer queues a batch before writing it, so bytes that arrive find
                // their batch queued; they are kept for it.
                closed = self.half.idle_read(&mut self.replies.buf) => {
                    if closed {
                        tracing::debug!("idle upstream connection closed");
                        self.fail(LostReason::ClosedByServer.into());
                    }
                }
            }
        }
    }

    /// One reply; counted for the watchdog.
    async fn read(&mut self) -> Result<(Bytes, ReplyFrame), UpstreamError> {
        let reply = self.replies.read_reply(&mut self.half, None).await?;
        self.link.replies.fetch_add(1, Ordering::Relaxed);
        Ok(reply)
    }

    /// Reads one batch's replies: swallows those of its state changes, hands the rest
    /// over. Fails when the connection does (the batch is then told by the caller).
    async fn answer(&mut self, item: &mut InFlight) -> Result<(), UpstreamError> {
        for _ in 0..item.swallow {
            let reply = self.read().await?;
            if reply.1.error {
                self.poisoned_by(reply);
            }
        }
        let mut woven = item.woven.iter().peekable();
        let mut client_gone = false;
        for index in 0..item.replies {
            let reply = self.read().await?;
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
            self.link.dead.store(true, Ordering::Release);
            self.poison = Some(reply);
        }
    }
}

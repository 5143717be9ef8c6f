//! Relay mode: the client is joined to a dedicated upstream connection and frames flow
//! both ways as they come, because the one-reply-per-request rule no longer holds — pub/sub
//! (messages arrive unasked; RESP3 interleaves push frames with replies), MONITOR, CLIENT
//! TRACKING (invalidation pushes), CLIENT REPLY OFF/SKIP (no replies at all).
//!
//! The upstream Redis enforces each mode's rules itself (RESP2's subscribed-mode command
//! set, PING's subscribed form, transactions inside RESP3 pub/sub), so the relay forwards
//! requests verbatim and passes every upstream frame through in order. What it must do
//! itself: answer the proxy-local commands (AUTH, HELLO, SELECT, CLIENT SETNAME …) in their
//! place — it first waits for everything already forwarded to be answered, using a PING
//! with a random token as a barrier — follow the subscription counts to know when the mode
//! is over, and bound the output it buffers for a client that does not read (Redis's
//! `client-output-buffer-limit pubsub`).

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::batch::Batch;
use super::clients::{self, flag};
use super::io::ClientIo;
use super::state::{Access, Flow, Session, request_bytes};
use crate::cluster::Cluster;
use crate::cluster::shards::{self, Shards, Wake};
use crate::cluster::slot::slot;
use crate::command::{self, Channels, ClientSub, Kind, Local};
use crate::config::OutputLimits;
use crate::metrics;
use crate::protocol::{Proto, Request, encode};
use crate::replies::{self, refusal};
use crate::upstream::conn::transition;
use crate::upstream::{ConnState, Pinned};

/// How relay mode ended.
pub(super) enum Exit {
    /// The mode is over and nothing is in flight: back to batches.
    Resume,
    /// The client is done (it left, QUIT, broke the protocol, or overran its buffer).
    Close,
}

/// What happens when the barrier's PING comes back.
enum After {
    /// Leave relay mode if no mode is active any more.
    Leave,
    /// Answer this proxy-local command now, in its place.
    Local(Request),
    /// Send this protocol error, then close.
    Fatal(Vec<u8>),
    /// RESET with CLIENT REPLY SKIP armed: reset, showing nothing (Redis skips the reply).
    QuietReset,
    /// Cluster mode: SSUBSCRIBE or SUNSUBSCRIBE, carried out on the shard channels' links.
    Shard(Request),
    /// Cluster mode: a command for a RESP2 client subscribed to shard channels only, sent
    /// to a link for Redis's subscribed-mode answer.
    OnLink(Request),
    /// Cluster mode: a keyed command for another node than the relay's connection, sent
    /// there.
    Routed { request: Request, slots: Vec<u16> },
    /// This reply, in its place.
    Reply(Bytes),
    /// CLIENT GETREDIR or TRACKINGINFO, sent now that nothing else is in flight: its
    /// reply is captured and shown with the ambassador's client id as the redirect.
    Translate(Request),
    /// The captured reply is in: shown, translated.
    Translated(ClientSub),
}

/// A reply the relay swallows: the answer to a state change it sent itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `+OK` (SELECT).
    Ok,
    /// A HELLO map.
    Hello,
    /// The reply to `CLIENT ID`: the relay's connection's id on the real Redis.
    ClientId,
}

/// The connection modes that keep the relay going.
#[derive(Default)]
struct Modes {
    /// Channels plus patterns subscribed (Redis's count in (P)(UN)SUBSCRIBE replies).
    subscriptions: i64,
    /// Shard channels subscribed.
    shard_subscriptions: i64,
    monitor: bool,
    tracking: bool,
    reply_off: bool,
    /// CLIENT REPLY SKIP was sent: the next command's reply is suppressed.
    skip_armed: bool,
    /// MULTI or WATCH went through the relay: the connection holds state the session does
    /// not track, so it stays relayed until RESET, QUIT or the client leaves.
    sticky: bool,
    /// Confirmations still to come for SUBSCRIBE/PSUBSCRIBE channels forwarded: the mode
    /// is active from the moment they are sent, so no barrier follows them (it would hold
    /// the client's next command back by a round trip, and show up upstream as the
    /// connection's last command). An error reply instead ends the assumption.
    confirming: usize,
    /// Cluster mode: a shard-channel command is in progress on the links.
    shard_busy: bool,
    /// Another client redirects its invalidations here (CLIENT TRACKING … REDIRECT):
    /// the connection stays for as long as the client does.
    target: bool,
}

impl Modes {
    fn active(&self) -> bool {
        self.subscriptions > 0
            || self.shard_subscriptions > 0
            || self.monitor
            || self.tracking
            || self.reply_off
            || self.skip_armed
            || self.sticky
            || self.shard_busy
            || self.confirming > 0
            || self.target
    }

    fn subscribed(&self) -> bool {
        self.subscriptions > 0 || self.shard_subscriptions > 0
    }
}

struct Relay {
    modes: Modes,
    /// The token of the barrier PING in flight, and what to do when it returns.
    barrier: Option<(Bytes, After)>,
    /// A MULTI was forwarded and no EXEC/DISCARD yet (outside RESP2 subscribed mode).
    in_multi: bool,
    /// Local commands refused inside such a transaction: the token of the unknown command
    /// sent in their place, and the reply that replaces its error.
    refusals: std::collections::VecDeque<(Bytes, Bytes)>,
    /// When the barrier in flight was sent (a barrier never answered closes the client).
    barrier_since: Option<Instant>,
    swallow: std::collections::VecDeque<Expect>,
    /// The client's part is over: no more of its requests are read.
    ending: Option<Ending>,
    /// The connection must not be reused (RESET left it unauthenticated).
    drop_conn: bool,
    /// A barrier returned with no mode active: every reply is in, relay mode is over.
    left: bool,
    /// Since when the client's pending output has been over the soft limit.
    over_soft_since: Option<Instant>,
    /// Cluster mode: the shard channels' links (made at the first shard-channel command).
    shards: Option<Shards>,
    /// Cluster mode: the node the relay's connection is on.
    node: Option<String>,
    /// A HELLO's reply, written when the relay's connection has switched protocol too.
    held_hello: Option<BytesMut>,
    /// The shard channels' links hold a HELLO's reply until the relay's connection has
    /// switched too.
    shards_wait_main: bool,
    /// MONITOR: the lines of the commands other clients had answered by the ambassador
    /// (`Session::feed_monitors`), from MONITOR's `+OK` on.
    monitor_feed: Option<tokio::sync::broadcast::Receiver<(u64, Bytes)>>,
    /// MONITOR was forwarded where Redis runs it: its `+OK` starts the feed.
    monitor_pending: bool,
    /// Who this client is on the real Redis (the relay's connection's id), once known.
    own_upstream: Option<u64>,
    /// CLIENT TRACKING's redirect: the ambassador's client id and the upstream
    /// connection's id it stands for.
    redirect: Option<(u64, u64)>,
    /// The next reply (not a push, not a message) is GETREDIR's or TRACKINGINFO's: kept
    /// for `After::Translated`.
    capture: bool,
    captured: Option<Bytes>,
    /// Channels and patterns subscribed, apart (Redis's counts add them up).
    channels: i64,
    patterns: i64,
    /// CLIENT NO-EVICT / NO-TOUCH are on on this connection: it must not go back to a
    /// pool as it is.
    no_evict_on_conn: bool,
    no_touch_on_conn: bool,
}

enum Step {
    Continue,
    Exit(Exit),
}

/// Why the client's requests stopped being read in relay mode.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// QUIT was forwarded: its `+OK`, then the close.
    Quit,
    /// RESET was forwarded: its `+RESET`, then back to batches on a new connection.
    Reset,
    /// RESET under CLIENT REPLY SKIP: reset once what is in flight is answered.
    QuietReset,
    /// The client broke the protocol: its error, then the close.
    ProtocolError,
}

impl Relay {
    /// Under CLIENT REPLY OFF/SKIP no reply is owed: nothing to order against, and a
    /// barrier PING would not be answered.
    fn quiet(&self) -> bool {
        self.modes.reply_off || self.modes.skip_armed
    }

    /// The shard channels' links, made at the first shard-channel command.
    fn shards_for(&mut self, cluster: Arc<Cluster>, timeout: Option<Duration>) -> &mut Shards {
        self.shards
            .get_or_insert_with(|| Shards::new(cluster, timeout.unwrap_or(Duration::from_secs(10))))
    }
}

impl Session {
    /// Relays `first` and everything after it until the mode it starts is over. Without
    /// `first`, the client has become a redirect target (see `clients`): it relays for
    /// as long as it stays.
    pub(super) async fn relay(&mut self, first: Option<Request>, io: &mut ClientIo) -> Exit {
        // Cluster mode: the relay's connection is on a master (the transaction's, if one is
        // bound); classic pub/sub is cluster-wide, shard channels have links of their own.
        let node = match &self.shared.cluster {
            Some(cluster) => match &self.binding.node {
                Some(bound) => Some(bound.clone()),
                None => cluster
                    .masters()
                    .await
                    .ok()
                    .and_then(|masters| masters.into_iter().next()),
            },
            None => None,
        };
        let upstream = node
            .as_deref()
            .or(self.identity.as_deref())
            .unwrap_or(&self.shared.upstream);
        let fresh = self.pinned.is_none();
        let mut conn = match self.pinned.take() {
            Some(conn) => conn,
            None => match upstream.pin().await {
                Ok(conn) => conn,
                Err(error) => {
                    let Some(first) = first else {
                        // A redirect target without a connection: the client asked for
                        // nothing, so it hears nothing; the redirecting client's wait
                        // runs out and it gets the refusal.
                        tracing::debug!(%error, "no dedicated connection for a redirect target");
                        self.client.forget_target();
                        return Exit::Resume;
                    };
                    let mut out = BytesMut::new();
                    replies::proxy_error(&mut out, &error);
                    metrics::record_command(
                        command::id(first.name()),
                        Some(error.class()),
                        std::time::Duration::ZERO,
                    );
                    return match io.writer.send(&out).await {
                        Ok(()) => Exit::Resume,
                        Err(_) => Exit::Close,
                    };
                }
            },
        };
        // Until it is proven clean, a relayed connection is not reusable.
        conn.broken = true;
        let mut relay = Relay {
            modes: Modes::default(),
            barrier: None,
            barrier_since: None,
            in_multi: false,
            refusals: std::collections::VecDeque::new(),
            swallow: Default::default(),
            ending: None,
            drop_conn: false,
            left: false,
            over_soft_since: None,
            shards: None,
            node: node.as_ref().map(|n| n.address()),
            held_hello: None,
            shards_wait_main: false,
            monitor_feed: None,
            monitor_pending: false,
            own_upstream: None,
            redirect: None,
            capture: false,
            captured: None,
            channels: 0,
            patterns: 0,
            no_evict_on_conn: false,
            no_touch_on_conn: self.no_touch && !fresh,
        };
        let mut out = BytesMut::new();
        let exit = self
            .relay_loop(first, &mut conn, &mut relay, io, &mut out)
            .await;
        self.relay_ended(&mut relay);
        if matches!(exit, Exit::Resume) && !relay.drop_conn {
            // Everything forwarded was answered and no mode is left: the connection is
            // as clean as the proxy found it.
            conn.broken = false;
            self.pinned = Some(conn);
            if !self.needs_pin() {
                self.pinned = None;
            }
            if !out.is_empty() && io.writer.send(&out).await.is_err() {
                return Exit::Close;
            }
        } else {
            if !out.is_empty() && io.writer.send(&out).await.is_err() {
                return Exit::Close;
            }
            // Dropped broken: the pool discards it.
            self.watching = false;
        }
        exit
    }

    /// Relays until the mode is over (`Resume`) or the client is done (`Close`).
    async fn relay_loop(
        &mut self,
        first: Option<Request>,
        conn: &mut Pinned,
        relay: &mut Relay,
        io: &mut ClientIo,
        out: &mut BytesMut,
    ) -> Exit {
        let limits = self.shared.output_limits;
        // The dedicated connection speaks the client's protocol on the client's database.
        if let Step::Exit(exit) = sync_state(self.conn_state(), conn, relay, true).await {
            return exit;
        }
        // A REDIRECT to itself needs the connection's own id before it is forwarded.
        let wait_for_id = first.as_ref().is_some_and(|f| {
            f.args.len() > 2
                && command::client_subcommand(&f.args[1])
                    .is_some_and(|s| s.kind == ClientSub::Tracking)
                && clients::tracking_options(&f.args).redirect.is_some()
        });
        if let Step::Exit(exit) = self.relay_start(conn, relay, wait_for_id).await {
            return exit;
        }
        if let Some(first) = first {
            if let Step::Exit(exit) = self.relay_request(first, conn, relay).await {
                return exit;
            }
        }
        let client = self.client.clone();
        loop {
            if let Step::Exit(exit) = self.relay_scanned(conn, relay, io).await {
                return exit;
            }
            let ClientIo {
                reader,
                writer,
                inbuf,
                scanner,
                ..
            } = &mut *io;
            let reading =
                relay.ending.is_none() && relay.barrier.is_none() && !relay.modes.shard_busy;
            let waiting = relay.barrier.is_some() || relay.modes.shard_busy;
            let step = tokio::select! {
                filled = conn.fill() => match filled {
                    Ok(n) if n > 0 => self.relay_frames(conn, relay, out).await,
                    _ => {
                        // QUIT's +OK, if any, is already in `out`.
                        if relay.ending != Some(Ending::Quit) {
                            tracing::debug!("upstream closed a relayed connection");
                        }
                        Step::Exit(Exit::Close)
                    }
                },
                written = writer.send_some(out), if !out.is_empty() || writer.unflushed() => {
                    match written {
                        Ok(()) => Step::Continue,
                        Err(_) => Step::Exit(Exit::Close),
                    }
                }
                line = next_monitor_line(&mut relay.monitor_feed) => {
                    if let Some((from, line)) = line {
                        if from != self.id {
                            out.extend_from_slice(&line);
                        }
                    }
                    Step::Continue
                }
                wake = next_wake(&mut relay.shards) => {
                    if let Some(shards) = relay.shards.as_mut() {
                        shards.handle(wake, self.proto, out).await;
                    }
                    sync_shards(relay);
                    leave_if_idle(conn, relay).await
                }
                _ = barrier_expired(relay.barrier_since, self.shared.upstream.command_timeout), if waiting => {
                    // Never answered: something the relay does not model swallowed it. The
                    // connection's state is unknown: it goes, and so does the client.
                    tracing::warn!("closing a relayed client: the upstream never answered the relay's barrier");
                    conn.broken = true;
                    Step::Exit(Exit::Close)
                }
                // CLIENT KILL: Redis frees the client at once.
                () = client.killed() => Step::Exit(Exit::Close),
                read = reader.read_buf(inbuf), if reading => match read {
                    Ok(n) if n > 0 => {
                        metrics::global().bytes_in.increment(n as u64);
                        self.client.touch(Instant::now());
                        match scanner.check_buffer(inbuf, self.requires_auth()) {
                            Ok(()) => Step::Continue,
                            Err(_) => Step::Exit(Exit::Close),
                        }
                    }
                    _ => Step::Exit(Exit::Close),
                },
            };
            if let Step::Exit(exit) = step {
                return exit;
            }
            if over_output_limit(out, relay, &limits) {
                return Exit::Close;
            }
            // Leave only when a barrier has proved nothing is in flight.
            if relay.left {
                return Exit::Resume;
            }
        }
    }

    /// Forwards what the client has sent, unless waiting on a barrier.
    async fn relay_scanned(
        &mut self,
        conn: &mut Pinned,
        relay: &mut Relay,
        io: &mut ClientIo,
    ) -> Step {
        while relay.ending.is_none() && relay.barrier.is_none() && !relay.modes.shard_busy {
            match io.scanner.next(&mut io.inbuf, self.requires_auth()) {
                Ok(Some(request)) => {
                    if let Step::Exit(exit) = self.relay_request(request, conn, relay).await {
                        return Step::Exit(exit);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    metrics::global().protocol_errors.increment(1);
                    relay.ending = Some(Ending::ProtocolError);
                    return match error.reply() {
                        Some(reply) if !relay.modes.reply_off => {
                            barrier(conn, relay, After::Fatal(reply)).await
                        }
                        _ => Step::Exit(Exit::Close),
                    };
                }
            }
        }
        Step::Continue
    }

    /// The frames the upstream has sent, each in turn.
    async fn relay_frames(
        &mut self,
        conn: &mut Pinned,
        relay: &mut Relay,
        out: &mut BytesMut,
    ) -> Step {
        loop {
            match conn.next_frame() {
                Ok(Some((bytes, _))) => {
                    if let Step::Exit(exit) = self.relay_frame(bytes, conn, relay, out).await {
                        return Step::Exit(exit);
                    }
                }
                Ok(None) => return Step::Continue,
                Err(error) => {
                    tracing::debug!(%error, "malformed frame on a relayed connection");
                    return Step::Exit(Exit::Close);
                }
            }
        }
    }

    /// One client request in relay mode.
    async fn relay_request(
        &mut self,
        request: Request,
        conn: &mut Pinned,
        relay: &mut Relay,
    ) -> Step {
        // The user's command rules first, as Redis checks its ACL before running (or
        // showing MONITOR) anything: a refusal takes the command's place (inside MULTI it
        // aborts the transaction, as Redis's does).
        if !matches!(self.access, Access::Any) {
            if let Some(reply) = self.policy_refusal(&request).await {
                return self.reply_in_relay(reply, conn, relay).await;
            }
        }
        self.note_relayed(&request);
        let request = match self.cluster_request(request, conn, relay).await {
            Ok(step) => return step,
            Err(request) => request,
        };
        // Relayed commands are not timed: their replies are not told apart from pushes.
        let Some(cmd) = command::lookup(request.name()) else {
            return forward(conn, relay, request).await;
        };
        if cmd.kind == Kind::HttpProbe {
            return Step::Exit(Exit::Close);
        }
        if !command::arity_ok(cmd.arity, request.args.len()) {
            // Redis's arity error, in its place.
            return self.local_in_relay(request, conn, relay).await;
        }
        match cmd.kind {
            Kind::Local(Local::Quit) => {
                relay.ending = Some(Ending::Quit);
                forward(conn, relay, request).await
            }
            Kind::Local(Local::Reset) if relay.modes.skip_armed => {
                // Redis would skip RESET's reply: wait for what is in flight, then reset
                // here, showing nothing.
                relay.ending = Some(Ending::QuietReset);
                match start_barrier(conn, relay, After::QuietReset).await {
                    Ok(()) => Step::Continue,
                    Err(exit) => Step::Exit(exit),
                }
            }
            Kind::Local(Local::Reset) => {
                relay.ending = Some(Ending::Reset);
                forward(conn, relay, request).await
            }
            Kind::Local(Local::Exec | Local::Discard) => {
                relay.in_multi = false;
                forward(conn, relay, request).await
            }
            Kind::Local(Local::Ping | Local::Echo | Local::Unwatch) => {
                forward(conn, relay, request).await
            }
            Kind::Local(Local::Client) => self.relay_client(request, conn, relay).await,
            Kind::Local(_) => self.local_in_relay(request, conn, relay).await,
            // This connection carries replies the relay reads frame by frame: it cannot
            // also become a replica's.
            Kind::Replication if !relay.in_multi => {
                let reply = unsupported(&request, refusal::REPLICATION_IN_RELAY);
                barrier(conn, relay, After::Reply(reply)).await
            }
            Kind::Multi | Kind::Watch => {
                relay.modes.sticky = true;
                if cmd.kind == Kind::Multi
                    && !(self.proto == Proto::Resp2 && relay.modes.subscribed())
                {
                    relay.in_multi = true;
                }
                forward(conn, relay, request).await
            }
            Kind::Monitor => {
                relay.modes.monitor = true;
                // RESP2's subscribed mode refuses it.
                relay.monitor_pending = !(self.proto == Proto::Resp2 && relay.modes.subscribed());
                self.client.set_flag(flag::MONITOR, true);
                forward(conn, relay, request).await
            }
            Kind::Subscribe(Channels::Classic) if adds_subscriptions(&request) => {
                relay.modes.confirming += request.args.len() - 1;
                forward(conn, relay, request).await
            }
            _ => forward(conn, relay, request).await,
        }
    }

    /// A CLIENT subcommand in relay mode: TRACKING and REPLY change the modes that keep the
    /// relay going; the ones the proxy answers are answered in their place.
    async fn relay_client(
        &mut self,
        request: Request,
        conn: &mut Pinned,
        relay: &mut Relay,
    ) -> Step {
        let sub = command::client_subcommand(&request.args[1]);
        match sub.map(|s| s.kind) {
            Some(ClientSub::Tracking) if request.args.len() > 2 => {
                let options = clients::tracking_options(&request.args);
                if options.on && self.shared.cluster.is_some() {
                    return self.local_in_relay(request, conn, relay).await;
                }
                if self.proto == Proto::Resp2 && relay.modes.subscribed() {
                    // Refused by Redis in subscribed mode: nothing to rewrite.
                    return forward(conn, relay, request).await;
                }
                self.relay_tracking(options, request, conn, relay).await
            }
            // The redirect they show is the upstream connection's id: asked alone, and
            // the reply shown with the client id it stands for.
            Some(ClientSub::GetRedir | ClientSub::TrackingInfo) if self.may_translate(relay) => {
                barrier(conn, relay, After::Translate(request)).await
            }
            Some(ClientSub::NoEvict | ClientSub::NoTouch) if request.args.len() == 3 => {
                self.relay_flag(request, conn, relay).await
            }
            Some(ClientSub::GetRedir | ClientSub::TrackingInfo) => {
                forward(conn, relay, request).await
            }
            // Redis refuses CLIENT REPLY in RESP2 subscribed mode: the modes stay.
            Some(ClientSub::Reply) if self.proto == Proto::Resp2 && relay.modes.subscribed() => {
                forward(conn, relay, request).await
            }
            Some(ClientSub::Reply) if request.args.len() == 3 => {
                let mode = &request.args[2];
                if mode.eq_ignore_ascii_case(b"off") {
                    relay.modes.reply_off = true;
                } else if mode.eq_ignore_ascii_case(b"on") {
                    relay.modes.reply_off = false;
                } else if mode.eq_ignore_ascii_case(b"skip") && !relay.modes.reply_off {
                    // Forwarded as is; armed once it is on its way.
                    let step = forward_raw(conn, request).await;
                    relay.modes.skip_armed = true;
                    return step;
                }
                forward(conn, relay, request).await
            }
            Some(ClientSub::Forward) => forward(conn, relay, request).await,
            _ => self.local_in_relay(request, conn, relay).await,
        }
    }

    /// Cluster mode: the requests the relay's one connection cannot carry (see
    /// `cluster::shards`): shard-channel commands, the commands of a RESP2 client
    /// subscribed to shard channels only, keyed commands for another node. `Err` gives the
    /// request back to the usual relay path.
    async fn cluster_request(
        &mut self,
        request: Request,
        conn: &mut Pinned,
        relay: &mut Relay,
    ) -> Result<Step, Request> {
        let Some(cluster) = self.shared.cluster.clone() else {
            return Err(request);
        };
        let cmd = command::lookup(request.name());
        let kind = cmd.map(|c| c.kind);
        if kind == Some(Kind::Subscribe(Channels::Shard)) {
            if cmd.is_some_and(|c| !command::arity_ok(c.arity, request.args.len())) {
                return Err(request);
            }
            return Ok(self.shard_command(cluster, request, conn, relay).await);
        }
        let resp2_subscribed = self.proto == Proto::Resp2 && relay.modes.subscribed();
        if resp2_subscribed && relay.modes.subscriptions == 0 {
            return self.on_shard_links(kind, request, conn, relay).await;
        }
        if resp2_subscribed
            || !matches!(
                kind,
                None | Some(
                    Kind::Forward
                        | Kind::Blocking
                        | Kind::WaitReplicas
                        | Kind::StreamRead
                        | Kind::Watch
                )
            )
        {
            return Err(request);
        }
        self.keyed_elsewhere(cluster, kind, request, conn, relay)
            .await
    }

    /// SSUBSCRIBE or SUNSUBSCRIBE, carried out on the shard channels' links.
    async fn shard_command(
        &mut self,
        cluster: Arc<Cluster>,
        request: Request,
        conn: &mut Pinned,
        relay: &mut Relay,
    ) -> Step {
        if relay.in_multi {
            let reply = unsupported(&request, refusal::SHARD_IN_MULTI);
            return refuse_in_multi(conn, relay, reply).await;
        }
        if !relay.quiet() {
            return barrier(conn, relay, After::Shard(request)).await;
        }
        // Under CLIENT REPLY OFF/SKIP no reply is owed: nothing to order against, and a
        // barrier PING would not be answered.
        if let Step::Exit(exit) = skip_on_relay(conn, relay).await {
            return Step::Exit(exit);
        }
        let proto = self.proto;
        let timeout = self.shared.upstream.command_timeout;
        let shards = relay.shards_for(cluster, timeout);
        let mut nothing = BytesMut::new();
        shards.command(&request, proto, &mut nothing, true).await;
        sync_shards(relay);
        relay.barrier_since = Some(Instant::now());
        leave_if_idle(conn, relay).await
    }

    /// A RESP2 client subscribed to shard channels only: subscribed mode is on the links,
    /// not on the relay's connection. The subscribe family, QUIT and RESET stay on it; the
    /// commands the proxy answers get the subscribed-context rules where they are
    /// answered; everything else goes to a link, for Redis's own answer.
    async fn on_shard_links(
        &mut self,
        kind: Option<Kind>,
        request: Request,
        conn: &mut Pinned,
        relay: &mut Relay,
    ) -> Result<Step, Request> {
        match kind {
            Some(
                Kind::Subscribe(_)
                | Kind::Monitor
                | Kind::HttpProbe
                | Kind::Local(Local::Quit | Local::Reset),
            ) => Err(request),
            Some(Kind::Local(local)) if local != Local::Ping => {
                Ok(self.local_in_relay(request, conn, relay).await)
            }
            _ if relay
                .shards
                .as_ref()
                .is_some_and(|s| s.subscribed_link().is_some()) =>
            {
                Ok(barrier(conn, relay, After::OnLink(request)).await)
            }
            _ => Ok(self.local_in_relay(request, conn, relay).await),
        }
    }

    /// A keyed command: on the relay's connection if its node serves the slot (`Err`),
    /// else sent to the slot's master — unless it binds to a connection (a transaction,
    /// WATCH) or would block the relay, which are refused.
    async fn keyed_elsewhere(
        &mut self,
        cluster: Arc<Cluster>,
        kind: Option<Kind>,
        request: Request,
        conn: &mut Pinned,
        relay: &mut Relay,
    ) -> Result<Step, Request> {
        let mut slots: Vec<u16> = Vec::new();
        {
            let args: Vec<&[u8]> = request.args.iter().map(|a| &a[..]).collect();
            for position in cluster.keys().key_positions(&args) {
                let s = slot(args[position]);
                if !slots.contains(&s) {
                    slots.push(s);
                }
            }
        }
        let here = match (slots.as_slice(), cluster.topology(), &relay.node) {
            ([], _, _) => true,
            ([one], Some(topology), Some(node)) => topology
                .master_of(*one)
                .is_some_and(|master| master.address == *node),
            _ => false,
        };
        if here || (kind == Some(Kind::Watch) && relay.in_multi) {
            return Err(request);
        }
        // Another node's keys. What binds to the relay's connection cannot go there: a
        // transaction or WATCH on it, or a command that would block the relay.
        let blocks = kind.is_some_and(|k| k.may_block(&request.args));
        let refusal = if relay.in_multi {
            Some(refusal::OTHER_NODE_IN_MULTI)
        } else if kind == Some(Kind::Watch) {
            Some(refusal::OTHER_NODE)
        } else if blocks {
            Some(refusal::OTHER_NODE_BLOCKING)
        } else {
            None
        };
        if let Some(why) = refusal {
            let reply = unsupported(&request, why);
            if relay.in_multi {
                return Ok(refuse_in_multi(conn, relay, reply).await);
            }
            if relay.quiet() {
                return Ok(skip_on_relay(conn, relay).await);
            }
            return Ok(barrier(conn, relay, After::Reply(reply)).await);
        }
        if relay.quiet() {
            if let Step::Exit(exit) = skip_on_relay(conn, relay).await {
                return Ok(Step::Exit(exit));
            }
            let _ = shards::routed(&cluster, &request, &slots, self.conn_state(), false).await;
            return Ok(leave_if_idle(conn, relay).await);
        }
        Ok(barrier(conn, relay, After::Routed { request, slots }).await)
    }

    /// A command the proxy answers itself, in relay mode: after everything forwarded
    /// before it has been answered.
    async fn local_in_relay(
        &mut self,
        request: Request,
        conn: &mut Pinned,
        relay: &mut Relay,
    ) -> Step {
        if relay.modes.reply_off || relay.modes.skip_armed {
            // No reply is owed, so there is nothing to order against: apply it, show
            // nothing (Redis suppresses the reply too).
            let skipping = std::mem::take(&mut relay.modes.skip_armed);
            let mut scratch = Batch::new(1);
            let _ = self.handle(request, &mut scratch).await;
            let changes = conn.state != self.conn_state();
            if let Step::Exit(exit) = sync_state(self.conn_state(), conn, relay, false).await {
                return Step::Exit(exit);
            }
            if skipping && !changes {
                // The upstream's SKIP still waits for a command: give it one whose
                // reply nobody wants, so it does not swallow the client's next reply.
                if let Step::Exit(exit) =
                    forward_raw_bytes(conn, encode::command(&[&b"PING"[..]])).await
                {
                    return Step::Exit(exit);
                }
            }
            return leave_if_idle(conn, relay).await;
        }
        if relay.in_multi {
            // No barrier inside a transaction (see `refuse_in_multi`).
            let mut reply = BytesMut::new();
            replies::unsupported(
                &mut reply,
                &full_name(&request),
                refusal::LOCAL_IN_RELAYED_MULTI,
            );
            return refuse_in_multi(conn, relay, reply.freeze()).await;
        }
        barrier(conn, relay, After::Local(request)).await
    }

    /// One frame from the upstream.
    async fn relay_frame(
        &mut self,
        bytes: Bytes,
        conn: &mut Pinned,
        relay: &mut Relay,
        out: &mut BytesMut,
    ) -> Step {
        if let Some(&expect) = relay.swallow.front() {
            let matches = match expect {
                Expect::Ok => &bytes[..] == b"+OK\r\n",
                Expect::Hello => bytes.starts_with(b"%") || bytes.starts_with(b"*14\r\n"),
                Expect::ClientId => bytes.starts_with(b":") || bytes.starts_with(b"-"),
            };
            if matches {
                relay.swallow.pop_front();
                if expect == Expect::ClientId {
                    self.own_upstream_id(&bytes, relay);
                }
                if expect == Expect::Hello {
                    if let Some(reply) = relay.held_hello.take() {
                        out.extend_from_slice(&reply);
                    } else if std::mem::take(&mut relay.shards_wait_main) {
                        if let Some(shards) = relay.shards.as_mut() {
                            shards.main_switched(out);
                        }
                        sync_shards(relay);
                    }
                }
                return Step::Continue;
            }
        }
        if relay.capture && is_reply(&bytes) {
            relay.capture = false;
            relay.captured = Some(bytes);
            return Step::Continue;
        }
        if let Some((token, _)) = &relay.barrier {
            if is_barrier_reply(&bytes, token) {
                let Some((_, after)) = relay.barrier.take() else {
                    return Step::Continue;
                };
                return self.barrier_done(after, conn, relay, out).await;
            }
        }
        if let Some((marker, _)) = relay.refusals.front() {
            if bytes.starts_with(b"-") && memchr::memmem::find(&bytes, marker).is_some() {
                if let Some((_, reply)) = relay.refusals.pop_front() {
                    out.extend_from_slice(&reply);
                }
                return Step::Continue;
            }
        }
        if relay.ending == Some(Ending::Reset) && &bytes[..] == b"+RESET\r\n" {
            out.extend_from_slice(&bytes);
            // The upstream connection is now unauthenticated: it goes, the client resets.
            self.reset();
            relay.drop_conn = true;
            return Step::Exit(Exit::Resume);
        }
        if relay.modes.confirming > 0 {
            if confirms_subscription(&bytes) {
                relay.modes.confirming -= 1;
            } else if bytes.starts_with(b"-") {
                // Perhaps the SUBSCRIBE itself refused: the barrier decides.
                relay.modes.confirming = 0;
            }
        }
        if relay.monitor_pending && (bytes.starts_with(b"+") || bytes.starts_with(b"-")) {
            relay.monitor_pending = false;
            if &bytes[..] == b"+OK\r\n" {
                // MONITOR's own +OK: from here on, the lines of what the ambassador answers.
                relay.monitor_feed = Some(self.shared.monitors.subscribe());
            }
        }
        if relay.modes.monitor && is_ambassadors_own(&bytes) {
            // The ambassador's own commands (a lane's SELECT, a handshake, a barrier) are
            // not the application's: MONITOR direct would not show them.
            return Step::Continue;
        }
        if let Some((shard, count)) = subscription_count(&bytes) {
            if shard {
                relay.modes.shard_subscriptions = count;
            } else {
                relay.modes.subscriptions = count;
            }
            self.note_subscriptions(&bytes, relay);
        }
        let bytes = redirect_broken(bytes, relay.redirect);
        out.extend_from_slice(&bytes);
        metrics::global().bytes_out.increment(bytes.len() as u64);
        // The last subscription gone: make sure nothing is still in flight before handing
        // the connection back.
        leave_if_idle(conn, relay).await
    }

    async fn barrier_done(
        &mut self,
        after: After,
        conn: &mut Pinned,
        relay: &mut Relay,
        out: &mut BytesMut,
    ) -> Step {
        match after {
            After::Leave => {
                if !relay.modes.active() && relay.swallow.is_empty() && relay.ending.is_none() {
                    // A redirect target keeps its connection (another client's
                    // invalidations go there) for as long as it stays.
                    if self.client.release_upstream() {
                        relay.left = true;
                    } else {
                        relay.modes.target = true;
                    }
                }
                Step::Continue
            }
            After::Translate(request) => {
                let kind = command::client_subcommand(&request.args[1])
                    .map_or(ClientSub::Forward, |s| s.kind);
                if let Step::Exit(exit) = forward_raw(conn, request).await {
                    return Step::Exit(exit);
                }
                relay.capture = true;
                barrier(conn, relay, After::Translated(kind)).await
            }
            After::Translated(kind) => {
                relay.capture = false;
                if let Some(reply) = relay.captured.take() {
                    out.extend_from_slice(&translate_redirect(kind, reply, relay.redirect));
                }
                leave_if_idle(conn, relay).await
            }
            After::Fatal(reply) => {
                out.extend_from_slice(&reply);
                Step::Exit(Exit::Close)
            }
            After::QuietReset => {
                self.reset();
                relay.drop_conn = true;
                Step::Exit(Exit::Resume)
            }
            After::Shard(request) => {
                let Some(cluster) = self.shared.cluster.clone() else {
                    return Step::Exit(Exit::Close);
                };
                let proto = self.proto;
                let shards = relay.shards_for(cluster, self.shared.upstream.command_timeout);
                shards.command(&request, proto, out, false).await;
                sync_shards(relay);
                relay.barrier_since = Some(Instant::now());
                leave_if_idle(conn, relay).await
            }
            After::OnLink(request) => {
                let link = relay.shards.as_ref().and_then(Shards::subscribed_link);
                match (link, relay.shards.as_mut()) {
                    (Some(index), Some(shards)) => {
                        let full = self.shared.cluster.as_ref().map_or_else(
                            || Bytes::from(full_name(&request)),
                            |cluster| cluster.keys().full_name(&request.args),
                        );
                        shards.command_on_link(index, request_bytes(request), full);
                        sync_shards(relay);
                        relay.barrier_since = Some(Instant::now());
                        Step::Continue
                    }
                    // The links are gone meanwhile: answered here, in subscribed mode.
                    _ => Box::pin(self.barrier_done(After::Local(request), conn, relay, out)).await,
                }
            }
            After::Routed { request, slots } => {
                let Some(cluster) = self.shared.cluster.clone() else {
                    return Step::Exit(Exit::Close);
                };
                let reply =
                    shards::routed(&cluster, &request, &slots, self.conn_state(), false).await;
                out.extend_from_slice(&reply);
                leave_if_idle(conn, relay).await
            }
            After::Reply(reply) => {
                out.extend_from_slice(&reply);
                leave_if_idle(conn, relay).await
            }
            After::Local(request) => self.local_after_barrier(request, conn, relay, out).await,
        }
    }

    /// What the relay sends first on its connection: `CLIENT ID` (whose reply says who
    /// this client is on the real Redis, for CLIENT TRACKING … REDIRECT), and the flags
    /// the client holds (NO-EVICT, NO-TOUCH) that the connection lacks. The replies are
    /// swallowed as they come; with `wait`, they are read now.
    async fn relay_start(&mut self, conn: &mut Pinned, relay: &mut Relay, wait: bool) -> Step {
        relay.modes.target = self.client.target_wanted();
        let mut start = BytesMut::new();
        encode::command_into(&mut start, &[&b"CLIENT"[..], b"ID"]);
        relay.swallow.push_back(Expect::ClientId);
        if self.no_evict {
            encode::command_into(&mut start, &[&b"CLIENT"[..], b"NO-EVICT", b"on"]);
            relay.swallow.push_back(Expect::Ok);
            relay.no_evict_on_conn = true;
        }
        if self.no_touch && !relay.no_touch_on_conn {
            start.extend_from_slice(&super::local::NO_TOUCH_ON);
            relay.swallow.push_back(Expect::Ok);
            relay.no_touch_on_conn = true;
        }
        if let Step::Exit(exit) = forward_raw_bytes(conn, start.freeze()).await {
            return Step::Exit(exit);
        }
        if !wait {
            return Step::Continue;
        }
        // Nothing else is in flight: the replies owed are the swallowed ones, in order.
        while let Some(expect) = relay.swallow.pop_front() {
            match conn.read_reply(self.shared.upstream.command_timeout).await {
                Ok((reply, _)) if expect == Expect::ClientId => self.own_upstream_id(&reply, relay),
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "relayed connection failed");
                    return Step::Exit(Exit::Close);
                }
            }
        }
        Step::Continue
    }

    /// `CLIENT ID`'s reply on the relay's connection: published, so that other clients
    /// can redirect their invalidations here.
    fn own_upstream_id(&mut self, reply: &[u8], relay: &mut Relay) {
        let id = reply
            .strip_prefix(b":")
            .and_then(|r| r.strip_suffix(b"\r\n"))
            .and_then(crate::protocol::number::parse_i64)
            .and_then(|id| u64::try_from(id).ok());
        relay.own_upstream = id;
        self.client.publish_upstream(id);
    }

    /// Whether GETREDIR's or TRACKINGINFO's reply can be told apart and translated: there
    /// is a redirect to translate, a reply is owed, and Redis runs the command now (not
    /// queued in MULTI, not refused in RESP2 subscribed mode).
    fn may_translate(&self, relay: &Relay) -> bool {
        let subscribed_resp2 = self.proto == Proto::Resp2 && relay.modes.subscribed();
        relay.redirect.is_some() && !relay.quiet() && !relay.in_multi && !subscribed_resp2
    }

    /// CLIENT LIST's `cmd`: the last command relayed.
    fn note_relayed(&self, request: &Request) {
        let id = command::id(request.name());
        let sub = match (id.name(), request.args.get(1)) {
            ("client", Some(sub)) => command::client_subcommand(sub).map(|s| s.index),
            _ => None,
        };
        self.client.set_command(id, sub);
    }

    /// CLIENT LIST's `sub`, `psub`, `ssub`: Redis's confirmations count channels and
    /// patterns together, so the change each one brings is put to its kind.
    fn note_subscriptions(&self, frame: &[u8], relay: &mut Relay) {
        let Some((shard, count)) = subscription_count(frame) else {
            return;
        };
        if !shard {
            let change = count - (relay.channels + relay.patterns);
            if confirmation_kind(frame).is_some_and(|k| k.starts_with(b"p")) {
                relay.patterns = (relay.patterns + change).max(0);
            } else {
                relay.channels = (relay.channels + change).max(0);
            }
            if count == 0 {
                relay.channels = 0;
                relay.patterns = 0;
            }
        }
        self.client.set_subscriptions(
            relay.channels,
            relay.patterns,
            relay.modes.shard_subscriptions,
        );
    }

    /// CLIENT TRACKING in relay mode: a REDIRECT to a client of the ambassador becomes
    /// one to the upstream connection that client relays on (waiting, within the command
    /// timeout, for a client that has none yet to get one: see `clients`).
    async fn relay_tracking(
        &mut self,
        options: clients::TrackingOptions,
        mut request: Request,
        conn: &mut Pinned,
        relay: &mut Relay,
    ) -> Step {
        let mut redirect = None;
        if let Some((at, id)) = options.redirect {
            let upstream = match self.redirect_target(id).await {
                Ok(upstream) => upstream,
                Err(reply) => return self.reply_in_relay(reply, conn, relay).await,
            };
            if options.twice {
                let reply = Bytes::from_static(replies::REDIRECT_TWICE);
                return self.reply_in_relay(reply, conn, relay).await;
            }
            let mut args = request.args;
            args[at] = Bytes::from(upstream.to_string());
            request = Request {
                args,
                canonical: None,
            };
            redirect = u64::try_from(id).ok().map(|id| (id, upstream));
        }
        if options.refused {
            // Redis refuses it: nothing changes.
            return forward(conn, relay, request).await;
        }
        relay.modes.tracking = options.on;
        if options.on {
            relay.redirect = redirect;
            let shown = redirect.map_or(0, |(id, _)| id);
            self.client.set_tracking(Some((shown, options.bcast)));
        } else {
            relay.redirect = None;
            self.client.set_tracking(None);
        }
        forward(conn, relay, request).await
    }

    /// The upstream connection client `id` relays on, made its redirect target; Redis's
    /// error when no such client is connected.
    async fn redirect_target(&self, id: i64) -> Result<u64, Bytes> {
        let missing = || Bytes::from_static(replies::REDIRECT_TARGET_MISSING);
        let target = u64::try_from(id)
            .ok()
            .and_then(|id| self.shared.clients.get(id))
            .ok_or_else(missing)?;
        let limit = self
            .shared
            .upstream
            .command_timeout
            .unwrap_or(Duration::from_secs(10));
        let deadline = Instant::now() + limit;
        loop {
            if let Some(upstream) = target.claim_target() {
                return Ok(upstream);
            }
            // Itself without an id (its CLIENT ID failed), or gone meanwhile.
            if target.id == self.id || self.shared.clients.get(target.id).is_none() {
                return Err(missing());
            }
            if Instant::now() >= deadline {
                let mut reply = BytesMut::new();
                replies::unsupported(&mut reply, "client|tracking", refusal::REDIRECT_TARGET_BUSY);
                return Err(reply.freeze());
            }
            // Woken by `claim_target`, the target opens a connection of its own.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A reply the relay makes itself, in its place.
    async fn reply_in_relay(&mut self, reply: Bytes, conn: &mut Pinned, relay: &mut Relay) -> Step {
        if relay.in_multi {
            return refuse_in_multi(conn, relay, reply).await;
        }
        if relay.quiet() {
            return skip_on_relay(conn, relay).await;
        }
        barrier(conn, relay, After::Reply(reply)).await
    }

    /// CLIENT NO-EVICT / NO-TOUCH in relay mode: kept for the client and sent on to its
    /// connection (Redis answers: `+OK`, a syntax error, or an unknown subcommand on a
    /// server without NO-TOUCH).
    async fn relay_flag(&mut self, request: Request, conn: &mut Pinned, relay: &mut Relay) -> Step {
        let on = if request.args[2].eq_ignore_ascii_case(b"on") {
            Some(true)
        } else if request.args[2].eq_ignore_ascii_case(b"off") {
            Some(false)
        } else {
            None
        };
        let refused = self.proto == Proto::Resp2 && relay.modes.subscribed();
        let no_touch = request.args[1].eq_ignore_ascii_case(b"no-touch");
        if let (Some(on), false) = (on, refused) {
            if no_touch {
                relay.no_touch_on_conn = on;
                if self.shared.cluster.is_none() && self.layout().await >= clients::Layout::V7_2 {
                    self.no_touch = on;
                    self.client.set_flag(flag::NO_TOUCH, on);
                }
            } else {
                relay.no_evict_on_conn = on;
                self.no_evict = on;
                self.client.set_flag(flag::NO_EVICT, on);
            }
        }
        forward(conn, relay, request).await
    }

    /// Relay mode is over: what it published goes; a connection that carries a flag the
    /// session will not keep it for is not handed back.
    fn relay_ended(&mut self, relay: &mut Relay) {
        if relay.no_evict_on_conn || (relay.no_touch_on_conn && !self.no_touch) {
            relay.drop_conn = true;
        }
        self.client.publish_upstream(None);
        if relay.drop_conn {
            self.client.forget_target();
        }
        self.client.set_subscriptions(0, 0, 0);
        self.client.set_flag(flag::MONITOR, false);
        self.client.set_tracking(None);
    }

    /// A command the proxy answers, once everything before it is answered: in RESP2
    /// subscribed mode with Redis's subscribed-context rules, else as outside relay mode,
    /// the connections following a change of database or protocol.
    async fn local_after_barrier(
        &mut self,
        request: Request,
        conn: &mut Pinned,
        relay: &mut Relay,
        out: &mut BytesMut,
    ) -> Step {
        if self.proto == Proto::Resp2 && relay.modes.subscribed() {
            if request.name().eq_ignore_ascii_case(b"ping") && request.args.len() <= 2 {
                // PING's subscribed form.
                replies::subscribed_pong(out, request.args.get(1).map(|a| &a[..]));
                return Step::Continue;
            }
            // Redis checks the command's existence and arity first.
            if !precheck(&request, out) {
                replies::not_in_subscribed_context(out, &full_name(&request));
            }
            return Step::Continue;
        }
        let mut scratch = Batch::new(1);
        let flow = self.handle(request, &mut scratch).await;
        // What it changed (database, protocol) shows in CLIENT LIST at once.
        self.publish_state();
        let reply = scratch.into_local();
        if matches!(flow, Flow::Close | Flow::Drop) {
            out.extend_from_slice(&reply);
            return Step::Exit(Exit::Close);
        }
        // A protocol change reaches the upstream connections before its reply
        // reaches the client: no message published after the reply comes in the
        // old protocol.
        let proto = self.proto;
        let main = conn.state.proto != proto;
        let reply = match relay.shards.as_mut() {
            Some(shards) => shards.switch_proto_before(proto, reply, main),
            None => Some(reply),
        };
        match reply {
            Some(reply) if main => relay.held_hello = Some(reply),
            Some(reply) => out.extend_from_slice(&reply),
            None => {
                relay.shards_wait_main = main;
                sync_shards(relay);
                relay.barrier_since = Some(Instant::now());
            }
        }
        if let Step::Exit(exit) = sync_state(self.conn_state(), conn, relay, true).await {
            return Step::Exit(exit);
        }
        if std::mem::take(&mut self.rebind) {
            // The client is another Redis user now (AUTH, HELLO … AUTH): so is its
            // connection, which then never goes back to the old identity's pool.
            conn.retired = true;
            relay.swallow.push_back(Expect::Ok);
            let login = self.upstream().login_request();
            if let Step::Exit(exit) = forward_raw_bytes(conn, login).await {
                return Step::Exit(exit);
            }
        }
        leave_if_idle(conn, relay).await
    }
}

/// Whether a frame is a reply (not a push, not a RESP2 pub/sub message).
fn is_reply(frame: &[u8]) -> bool {
    !(frame.starts_with(b">")
        || frame.starts_with(b"*3\r\n$7\r\nmessage\r\n")
        || frame.starts_with(b"*4\r\n$8\r\npmessage\r\n")
        || frame.starts_with(b"*3\r\n$8\r\nsmessage\r\n"))
}

/// The kind of a (p|s)(un)subscribe confirmation (`subscribe`, `punsubscribe`, …).
fn confirmation_kind(frame: &[u8]) -> Option<&[u8]> {
    let rest = frame.get(4..)?.strip_prefix(b"$")?;
    let end = memchr::memchr(b'\r', rest)?;
    let len: usize = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    rest.get(end + 2..end + 2 + len)
}

/// Replaces the integer that follows `key` in `frame` when it is `from`.
fn replace_integer(frame: &[u8], key: &[u8], from: u64, to: u64) -> Option<Bytes> {
    let at = memchr::memmem::find(frame, key)? + key.len();
    let rest = frame.get(at..)?.strip_prefix(b":")?;
    let end = memchr::memchr(b'\r', rest)?;
    if crate::protocol::number::parse_i64(&rest[..end]) != i64::try_from(from).ok() {
        return None;
    }
    let mut out = BytesMut::with_capacity(frame.len() + 8);
    out.extend_from_slice(&frame[..at]);
    out.extend_from_slice(b":");
    out.extend_from_slice(itoa::Buffer::new().format(to).as_bytes());
    out.extend_from_slice(&rest[end..]);
    Some(out.freeze())
}

/// GETREDIR's or TRACKINGINFO's reply with the client id the redirect stands for.
fn translate_redirect(kind: ClientSub, reply: Bytes, redirect: Option<(u64, u64)>) -> Bytes {
    let Some((id, upstream)) = redirect else {
        return reply;
    };
    let key: &[u8] = if kind == ClientSub::TrackingInfo {
        b"$8\r\nredirect\r\n"
    } else {
        b""
    };
    replace_integer(&reply, key, upstream, id).unwrap_or(reply)
}

/// Redis's `tracking-redir-broken` push names the upstream connection: shown with the
/// client id it stands for.
fn redirect_broken(frame: Bytes, redirect: Option<(u64, u64)>) -> Bytes {
    const BROKEN: &[u8] = b">2\r\n$21\r\ntracking-redir-broken\r\n";
    match redirect {
        Some((id, upstream)) if frame.starts_with(BROKEN) => {
            replace_integer(&frame, BROKEN, upstream, id).unwrap_or(frame)
        }
        _ => frame,
    }
}

/// Redis's client-output-buffer-limit for pub/sub: a hard cap, and a soft cap that may be
/// exceeded only briefly. True when the client must be closed.
fn over_output_limit(out: &BytesMut, relay: &mut Relay, limits: &OutputLimits) -> bool {
    if out.len() > limits.hard {
        tracing::warn!(
            bytes = out.len(),
            "closing a relayed client over the hard output limit"
        );
        return true;
    }
    if out.len() <= limits.soft {
        relay.over_soft_since = None;
        return false;
    }
    let since = *relay.over_soft_since.get_or_insert_with(Instant::now);
    if since.elapsed() >= limits.soft_duration {
        tracing::warn!(
            bytes = out.len(),
            "closing a relayed client over the soft output limit"
        );
        return true;
    }
    false
}

/// Inside a transaction a barrier PING would only be queued: Redis itself must answer in
/// order. An unknown command carrying a token gets its error (and aborts the transaction
/// at EXEC, as a refused command does), and that error is replaced by `reply` when it
/// comes back.
async fn refuse_in_multi(conn: &mut Pinned, relay: &mut Relay, reply: Bytes) -> Step {
    let marker = barrier_token();
    relay.refusals.push_back((marker.clone(), reply));
    forward_raw_bytes(conn, encode::command(&[&marker[..]])).await
}

/// A command whose reply Redis would not send (CLIENT REPLY SKIP armed) and that does not
/// reach the relay's connection: the connection's SKIP is given a PING to spend, so that
/// it does not swallow the reply of the next command.
async fn skip_on_relay(conn: &mut Pinned, relay: &mut Relay) -> Step {
    if std::mem::take(&mut relay.modes.skip_armed) {
        return forward_raw_bytes(conn, encode::command(&[&b"PING"[..]])).await;
    }
    Step::Continue
}

/// The ambassador's refusal of `request`, for `why`.
fn unsupported(request: &Request, why: &str) -> Bytes {
    let mut reply = BytesMut::new();
    replies::unsupported(&mut reply, &full_name(request), why);
    reply.freeze()
}

/// Sends a barrier; `after` runs when it returns.
async fn barrier(conn: &mut Pinned, relay: &mut Relay, after: After) -> Step {
    match start_barrier(conn, relay, after).await {
        Ok(()) => Step::Continue,
        Err(exit) => Step::Exit(exit),
    }
}

/// What the shard channels' links have to say, when there are links.
async fn next_wake(shards: &mut Option<Shards>) -> Wake {
    match shards {
        Some(shards) => shards.wake().await,
        None => std::future::pending().await,
    }
}

/// The modes follow the shard channels.
fn sync_shards(relay: &mut Relay) {
    if let Some(shards) = &relay.shards {
        relay.modes.shard_subscriptions = shards.count() as i64;
        relay.modes.shard_busy = shards.busy();
    }
}

/// Forwards a request as received, clearing a pending REPLY SKIP once it has gone.
async fn forward(conn: &mut Pinned, relay: &mut Relay, request: Request) -> Step {
    let step = forward_raw(conn, request).await;
    if !matches!(step, Step::Continue) {
        return step;
    }
    // SKIP applies to this command only.
    relay.modes.skip_armed = false;
    leave_if_idle(conn, relay).await
}

/// When no mode is (yet, or any longer) active — a SUBSCRIBE whose confirmation has not
/// come, an UNSUBSCRIBE, TRACKING OFF, REPLY ON — sends a barrier: when it returns, the
/// counts are known and every reply is in, and relay mode ends if nothing holds it.
async fn leave_if_idle(conn: &mut Pinned, relay: &mut Relay) -> Step {
    if relay.modes.active() || relay.barrier.is_some() || relay.ending.is_some() {
        return Step::Continue;
    }
    match start_barrier(conn, relay, After::Leave).await {
        Ok(()) => Step::Continue,
        Err(exit) => Step::Exit(exit),
    }
}

async fn forward_raw(conn: &mut Pinned, request: Request) -> Step {
    forward_raw_bytes(conn, request_bytes(request)).await
}

async fn forward_raw_bytes(conn: &mut Pinned, bytes: Bytes) -> Step {
    match conn.write_all(&[bytes], None).await {
        Ok(()) => Step::Continue,
        Err(error) => {
            tracing::debug!(%error, "relayed connection failed");
            Step::Exit(Exit::Close)
        }
    }
}

/// Brings the connection to the client's database and protocol after a local SELECT or
/// HELLO, swallowing the replies.
/// `replies` is false when the upstream will not answer (CLIENT REPLY OFF, or the command
/// a SKIP applies to).
async fn sync_state(
    target: ConnState,
    conn: &mut Pinned,
    relay: &mut Relay,
    replies: bool,
) -> Step {
    if let Some(shards) = relay.shards.as_mut() {
        shards.set_proto(target.proto);
    }
    if conn.state == target {
        return Step::Continue;
    }
    let mut fix = BytesMut::new();
    if conn.state.proto != target.proto {
        transition(
            &mut fix,
            conn.state,
            ConnState {
                db: conn.state.db,
                proto: target.proto,
            },
        );
        if replies {
            relay.swallow.push_back(Expect::Hello);
        }
    }
    if conn.state.db != target.db {
        transition(
            &mut fix,
            ConnState {
                db: conn.state.db,
                proto: target.proto,
            },
            target,
        );
        if replies {
            relay.swallow.push_back(Expect::Ok);
        }
    }
    conn.state = target;
    match conn.write_all(&[fix.freeze()], None).await {
        Ok(()) => Step::Continue,
        Err(_) => Step::Exit(Exit::Close),
    }
}

/// Resolves when a barrier sent at `since` has waited longer than the command timeout (10 s
/// when that is off).
async fn barrier_expired(since: Option<Instant>, timeout: Option<std::time::Duration>) {
    let limit = timeout.unwrap_or(std::time::Duration::from_secs(10));
    match since {
        Some(since) => tokio::time::sleep_until((since + limit).into()).await,
        None => std::future::pending().await,
    }
}

/// A fresh random token.
fn barrier_token() -> Bytes {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x5eed);
    Bytes::from(format!("redis-ambassador-barrier-{:016x}", hasher.finish()))
}

/// Sends a PING carrying a fresh random token; client requests wait until it returns.
async fn start_barrier(conn: &mut Pinned, relay: &mut Relay, after: After) -> Result<(), Exit> {
    let token = barrier_token();
    let ping = encode::command(&[&b"PING"[..], &token]);
    relay.barrier = Some((token, after));
    relay.barrier_since = Some(Instant::now());
    let mut chunks = Vec::with_capacity(2);
    if std::mem::take(&mut relay.modes.skip_armed) {
        // The upstream would skip the barrier's reply: give it a command to skip first.
        chunks.push(encode::command(&[&b"PING"[..]]));
    }
    chunks.push(ping);
    conn.write_all(&chunks, None).await.map_err(|_| Exit::Close)
}

/// Whether `frame` is the answer to the barrier PING: a bulk string in normal mode, or
/// `["pong", token]` in RESP2 subscribed mode.
fn is_barrier_reply(frame: &[u8], token: &[u8]) -> bool {
    let mut bulk = BytesMut::new();
    encode::bulk(&mut bulk, token);
    frame == &bulk[..]
        || (frame.starts_with(b"*2\r\n$4\r\npong\r\n")
            && frame.ends_with(&bulk)
            && frame.len() == 14 + bulk.len())
}

/// Whether a MONITOR line (`+<time> [<db> <addr>] "<command>" …`) shows a command the
/// ambassador sent itself: the state changes woven in front of batches (SELECT, HELLO),
/// a connection's handshake (AUTH, HELLO, `CONFIG GET databases`), a relay's barrier
/// PING and `CLIENT ID`, the readiness probe's PING, and the WAIT fence. Clients' own SELECT, HELLO and AUTH are answered by the
/// ambassador and never reach Redis (but a SELECT queued in a transaction: hidden too).
fn is_ambassadors_own(line: &[u8]) -> bool {
    if !line.starts_with(b"+") {
        return false;
    }
    let Some(start) = memchr::memmem::find(line, b"] \"") else {
        return false;
    };
    let command = &line[start + 2..];
    const OWN: [&[u8]; 7] = [
        b"\"client\" \"id\"\r\n",
        b"\"select\" ",
        b"\"hello\" ",
        b"\"auth\" ",
        b"\"config\" \"get\" \"databases\"\r\n",
        b"\"ping\" \"redis-ambassador-",
        b"\"spublish\" \"redis-ambassador:wait\" ",
    ];
    // Case as sent: the ambassador's own are upper case, a client's may be either.
    OWN.iter().any(|own| {
        command
            .get(..own.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(own))
    })
}

/// The next line for a MONITOR client from the ambassador's own answers; pending for ever
/// without a feed. `None` when lines were lost to a client too slow (Redis would have
/// closed it at its output limit; the upstream's own lines still come).
async fn next_monitor_line(
    feed: &mut Option<tokio::sync::broadcast::Receiver<(u64, Bytes)>>,
) -> Option<(u64, Bytes)> {
    match feed {
        Some(rx) => match rx.recv().await {
            Ok(line) => Some(line),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Whether a request is SUBSCRIBE or PSUBSCRIBE (one confirmation per channel).
fn adds_subscriptions(request: &Request) -> bool {
    let name = request.name();
    name.eq_ignore_ascii_case(b"subscribe") || name.eq_ignore_ascii_case(b"psubscribe")
}

/// Whether a frame confirms a SUBSCRIBE or PSUBSCRIBE channel.
fn confirms_subscription(frame: &[u8]) -> bool {
    let Some(rest) = frame
        .strip_prefix(b"*3\r\n")
        .or_else(|| frame.strip_prefix(b">3\r\n"))
    else {
        return false;
    };
    rest.starts_with(b"$9\r\nsubscribe\r\n") || rest.starts_with(b"$10\r\npsubscribe\r\n")
}

/// For a (p|s)(un)subscribe confirmation, whether it counts shard channels and the count.
fn subscription_count(frame: &[u8]) -> Option<(bool, i64)> {
    let rest = frame
        .strip_prefix(b"*3\r\n")
        .or_else(|| frame.strip_prefix(b">3\r\n"))?;
    let rest = rest.strip_prefix(b"$")?;
    let line_end = memchr::memchr(b'\r', rest)?;
    let len: usize = std::str::from_utf8(&rest[..line_end]).ok()?.parse().ok()?;
    let kind = rest.get(line_end + 2..line_end + 2 + len)?;
    let shard = match kind {
        b"subscribe" | b"unsubscribe" | b"psubscribe" | b"punsubscribe" => false,
        b"ssubscribe" | b"sunsubscribe" => true,
        _ => return None,
    };
    // The count is the last element: `:N\r\n`.
    let body = frame.strip_suffix(b"\r\n")?;
    let colon = body.iter().rposition(|&b| b == b':')?;
    if colon < 2 || &body[colon - 2..colon] != b"\r\n" {
        return None;
    }
    let count = std::str::from_utf8(&body[colon + 1..]).ok()?.parse().ok()?;
    Some((shard, count))
}

/// Redis's unknown-subcommand and arity checks, which come before the subscribed-mode
/// rule; writes the error and returns true if one fails.
fn precheck(request: &Request, out: &mut BytesMut) -> bool {
    let Some(cmd) = command::lookup(request.name()) else {
        return false;
    };
    if !command::arity_ok(cmd.arity, request.args.len()) {
        replies::wrong_arity(out, cmd.name);
        return true;
    }
    if cmd.kind == Kind::Local(Local::Client) {
        match command::client_subcommand(&request.args[1]) {
            None => {
                replies::unknown_subcommand(out, &request.args[0], &request.args[1]);
                return true;
            }
            Some(sub) if !command::arity_ok(sub.arity, request.args.len()) => {
                replies::wrong_arity(out, sub.full_name);
                return true;
            }
            Some(_) => {}
        }
    }
    false
}

/// A command's name as Redis prints it in errors: `client|setname` for subcommands.
fn full_name(request: &Request) -> String {
    let name = String::from_utf8_lossy(request.name()).to_ascii_lowercase();
    if name == "client" {
        if let Some(sub) = request
            .args
            .get(1)
            .and_then(|s| command::client_subcommand(s))
        {
            return sub.full_name.to_owned();
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_counts() {
        assert_eq!(
            subscription_count(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"),
            Some((false, 1))
        );
        assert_eq!(
            subscription_count(b">3\r\n$12\r\nsunsubscribe\r\n$1\r\ns\r\n:0\r\n"),
            Some((true, 0))
        );
        assert_eq!(
            subscription_count(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"),
            Some((false, 0))
        );
        assert_eq!(
            subscription_count(b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n"),
            Some((false, 0))
        );
        assert_eq!(
            subscription_count(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\n:1\r\n"),
            None
        );
        assert_eq!(subscription_count(b"+OK\r\n"), None);
    }

    #[test]
    fn the_ambassadors_own_monitor_lines() {
        assert!(is_ambassadors_own(
            b"+1.2 [9 127.0.0.1:5] \"select\" \"9\"\r\n"
        ));
        assert!(is_ambassadors_own(
            b"+1.2 [0 127.0.0.1:5] \"config\" \"get\" \"databases\"\r\n"
        ));
        assert!(is_ambassadors_own(
            b"+1.2 [0 127.0.0.1:5] \"ping\" \"redis-ambassador-barrier-0123\"\r\n"
        ));
        assert!(!is_ambassadors_own(
            b"+1.2 [9 127.0.0.1:5] \"set\" \"select\"\r\n"
        ));
        assert!(!is_ambassadors_own(b"+1.2 [9 127.0.0.1:5] \"ping\"\r\n"));
        assert!(!is_ambassadors_own(b"+OK\r\n"));
        assert!(is_ambassadors_own(
            b"+1.2 [0 127.0.0.1:5] \"PING\" \"redis-ambassador-probe\"\r\n"
        ));
        assert!(is_ambassadors_own(
            b"+1.2 [0 127.0.0.1:5] \"AUTH\" \"(redacted)\"\r\n"
        ));
        assert!(is_ambassadors_own(
            b"+1.2 [0 127.0.0.1:5] \"HELLO\" \"2\"\r\n"
        ));
    }

    #[test]
    fn subscription_confirmations() {
        assert!(confirms_subscription(
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
        ));
        assert!(confirms_subscription(
            b">3\r\n$10\r\npsubscribe\r\n$1\r\na\r\n:2\r\n"
        ));
        assert!(!confirms_subscription(
            b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n"
        ));
        assert!(!confirms_subscription(
            b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n"
        ));
    }

    #[test]
    fn barrier_replies() {
        let token = b"tok";
        assert!(is_barrier_reply(b"$3\r\ntok\r\n", token));
        assert!(is_barrier_reply(
            b"*2\r\n$4\r\npong\r\n$3\r\ntok\r\n",
            token
        ));
        assert!(!is_barrier_reply(b"$3\r\ntoc\r\n", token));
        assert!(!is_barrier_reply(
            b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$3\r\ntok\r\n",
            token
        ));
    }
}

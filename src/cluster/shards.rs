//! Cluster mode, in relay mode: shard channels and keyed commands.
//!
//! A standalone Redis lets one connection `SSUBSCRIBE` to any channels; in a cluster each
//! shard channel lives on its slot's master. So SSUBSCRIBE and SUNSUBSCRIBE — any number
//! of channels, in any slots — are carried out on one dedicated connection per node (a
//! "link"), beside the relay's own connection, which carries everything else. The client
//! gets what one Redis would send: a confirmation per channel, in its order, counting all
//! its shard channels; the links' own confirmations are swallowed.
//!
//! When a slot moves, its old master ends the subscriptions in it with an unasked
//! `sunsubscribe`; when a link is lost, its subscriptions go with it. Either way the
//! channels are subscribed again on the slot's master now (following `-MOVED`), and the
//! client sees nothing; messages published in between are lost, as they are for a
//! cluster client. Only a channel that cannot be subscribed again after
//! `RESUBSCRIBE_ATTEMPTS` tries (about 17 s) ends with the `sunsubscribe` Redis sent.
//!
//! A RESP2 client with shard channels only is in subscribed mode on its links, not on the
//! relay's connection: its other commands are sent to a link, so Redis answers them as it
//! would in that mode (`pong` arrays, the subscribed-context error).
//!
//! A keyed command whose slot is served by another node than the relay's connection
//! (SPUBLISH, GET … in RESP3 pub/sub, under CLIENT TRACKING or REPLY OFF) is sent to the
//! slot's master on the shared path, redirects followed, and its reply put in its place;
//! keys in several slots are split as outside relay mode ([`routed`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::router::{Cluster, Redirect};
use super::scatter::scatter;
use super::slot::slot;
use crate::command::{self, Spread};
use crate::protocol::{Proto, Request, encode};
use crate::replies;
use crate::upstream::conn::transition;
use crate::upstream::{ConnState, LostReason, Pinned, UnavailableReason, UpstreamError};

/// Tries to subscribe a channel again before the client is told it was unsubscribed.
const RESUBSCRIBE_ATTEMPTS: u32 = 20;
/// The first wait between tries; it doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// `-MOVED` replies followed for one SSUBSCRIBE.
const MAX_REDIRECTS: u8 = 5;
/// Frames a link's reader may hold before it waits for the relay (then TCP pushes back).
const EVENT_QUEUE: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sub,
    Unsub,
    /// Any other command, sent to a link for its subscribed-mode answer: one reply.
    Other,
    /// HELLO (after the client changed protocol) or ASKING: its reply is swallowed.
    Swallow,
}

/// A command sent on a link whose replies have not all come.
struct Pending {
    kind: Kind,
    /// The SSUBSCRIBE's channels (for a redirect).
    channels: Vec<Bytes>,
    /// Confirmations (or the reply) still to come.
    remaining: usize,
    /// Part of the client's command (else the ambassador's own resubscription or cleanup).
    client: bool,
    redirects: u8,
    /// When it was written: a link that leaves it unanswered for the command timeout is
    /// taken for dead (see `Wake::Stale`).
    sent: Instant,
}

/// A dedicated connection to one node, read and written by its own task.
struct Link {
    id: u64,
    address: String,
    proto: Proto,
    commands: mpsc::UnboundedSender<Bytes>,
    pending: VecDeque<Pending>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        // The connection goes with the task, never back to a pool: it is subscribed.
        self.task.abort();
    }
}

pub enum Event {
    Frame(u64, Bytes),
    Closed(u64),
}

/// What woke the relay.
pub enum Wake {
    Event(Event),
    Retry,
    /// A link has left a command unanswered for the command timeout.
    Stale,
}

/// Where a shard channel of the client's is subscribed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// Confirmed by this node.
    Node(String),
    /// SSUBSCRIBE sent to this node, not yet confirmed.
    Sent(String),
    /// Lost (slot moved, link lost): to be subscribed again.
    Orphan,
}

/// The client's command in progress: the client's requests wait until it is done.
struct Op {
    /// What the client gets when every part is done (computed when the command came:
    /// the counts follow from the subscriptions then).
    replies: BytesMut,
    parts: usize,
    error: Option<Bytes>,
    /// SSUBSCRIBE: the channels it adds (taken back if a part fails).
    added: Vec<Bytes>,
    /// Nothing is shown (CLIENT REPLY OFF/SKIP).
    quiet: bool,
}

pub struct Shards {
    cluster: Arc<Cluster>,
    links: Vec<Link>,
    next_id: u64,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    channels: HashMap<Bytes, Place>,
    /// Resubscription tries per orphaned channel.
    attempts: HashMap<Bytes, u32>,
    op: Option<Op>,
    retry_at: Option<Instant>,
    /// The timeout for a link's handshake.
    timeout: Duration,
}

impl Shards {
    pub fn new(cluster: Arc<Cluster>, timeout: Duration) -> Shards {
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        Shards {
            cluster,
            links: Vec::new(),
            next_id: 0,
            events_tx,
            events,
            channels: HashMap::new(),
            attempts: HashMap::new(),
            op: None,
            retry_at: None,
            timeout,
        }
    }

    /// Shard channels the client is subscribed to, as Redis counts them.
    pub fn count(&self) -> usize {
        self.channels.len()
    }

    /// A client command is in progress.
    pub fn busy(&self) -> bool {
        self.op.is_some()
    }

    /// Whether a RESP2 client's other commands should go to a link (see the module's
    /// comment): it has a confirmed shard channel there.
    pub fn subscribed_link(&self) -> Option<usize> {
        self.links.iter().position(|link| {
            self.channels
                .values()
                .any(|place| matches!(place, Place::Node(a) if *a == link.address))
        })
    }

    /// Carries out the client's SSUBSCRIBE or SUNSUBSCRIBE; the replies reach `out` when
    /// every node has answered (`quiet`: they never do).
    pub async fn command(
        &mut self,
        request: &Request,
        proto: Proto,
        out: &mut BytesMut,
        quiet: bool,
    ) {
        let unsubscribe = request.name().eq_ignore_ascii_case(b"sunsubscribe");
        let mut op = Op {
            replies: BytesMut::new(),
            parts: 0,
            error: None,
            added: Vec::new(),
            quiet,
        };
        if unsubscribe {
            let list: Vec<Bytes> = if request.args.len() > 1 {
                request.args[1..].to_vec()
            } else {
                self.channels.keys().cloned().collect()
            };
            if list.is_empty() {
                replies::subscription(&mut op.replies, proto, b"sunsubscribe", None, 0);
            }
            let mut by_node: Vec<(String, Vec<Bytes>)> = Vec::new();
            for channel in list {
                if let Some(place) = self.channels.remove(&channel) {
                    self.attempts.remove(&channel);
                    if let Place::Node(address) | Place::Sent(address) = place {
                        group(&mut by_node, address, channel.clone());
                    }
                }
                let count = self.channels.len();
                replies::subscription(
                    &mut op.replies,
                    proto,
                    b"sunsubscribe",
                    Some(&channel),
                    count,
                );
            }
            for (address, channels) in by_node {
                // A node that is gone has no subscription left to end.
                if let Ok(index) = self.link(&address, proto).await {
                    self.send(index, Kind::Unsub, channels, true, 0);
                    op.parts += 1;
                }
            }
        } else {
            // One SSUBSCRIBE per slot: Redis Cluster refuses channels of several slots.
            let mut by_slot: HashMap<u16, Vec<Bytes>> = HashMap::new();
            for channel in &request.args[1..] {
                by_slot
                    .entry(slot(channel))
                    .or_default()
                    .push(channel.clone());
                if !self.channels.contains_key(channel) {
                    self.channels.insert(channel.clone(), Place::Orphan);
                    op.added.push(channel.clone());
                }
                let count = self.channels.len();
                replies::subscription(&mut op.replies, proto, b"ssubscribe", Some(channel), count);
            }
            for (s, channels) in by_slot {
                let linked = self.link_for(s, proto).await;
                match linked {
                    Ok((index, address)) => {
                        for channel in &channels {
                            if let Some(place) = self.channels.get_mut(channel) {
                                if *place == Place::Orphan {
                                    *place = Place::Sent(address.clone());
                                }
                            }
                        }
                        self.send(index, Kind::Sub, channels, true, 0);
                        op.parts += 1;
                    }
                    Err(error) => {
                        op.error.get_or_insert_with(|| proxy_error(&error));
                    }
                }
            }
        }
        self.op = Some(op);
        self.finish_op(out);
    }

    /// Sends a command the client gave (not SSUBSCRIBE/SUNSUBSCRIBE) to link `index`, for
    /// Redis's subscribed-mode answer. `full_name` is the command's name as Redis prints
    /// it in errors (see `frame`).
    pub fn command_on_link(&mut self, index: usize, request: Bytes, full_name: Bytes) {
        self.op = Some(Op {
            replies: BytesMut::new(),
            parts: 1,
            error: None,
            added: Vec::new(),
            quiet: false,
        });
        let Some(link) = self.links.get_mut(index) else {
            self.op = None;
            return;
        };
        // Sent or not: a link whose task is gone reports `Closed`, which fails what is
        // pending on it.
        let _ = link.commands.send(request);
        link.pending.push_back(Pending {
            kind: Kind::Other,
            channels: vec![full_name],
            remaining: 1,
            client: true,
            redirects: 0,
            sent: Instant::now(),
        });
    }

    /// Brings every link to the client's protocol (after HELLO in relay mode), so that
    /// messages reach the client in it.
    pub fn set_proto(&mut self, proto: Proto) {
        self.switch_proto(proto, false);
    }

    /// [`set_proto`](Shards::set_proto) for the client's HELLO: its `reply` is held until
    /// every link has switched (and, with `main`, the relay's connection too: see
    /// [`main_switched`](Shards::main_switched)), so no message after it comes in the old
    /// protocol, as on one connection, where HELLO runs before anything published after
    /// its reply. Without a link to switch, the reply is given back.
    pub fn switch_proto_before(
        &mut self,
        proto: Proto,
        reply: BytesMut,
        main: bool,
    ) -> Option<BytesMut> {
        let switched = self.switch_proto(proto, true);
        if switched == 0 {
            return Some(reply);
        }
        self.op = Some(Op {
            replies: reply,
            parts: switched + usize::from(main),
            error: None,
            added: Vec::new(),
            quiet: false,
        });
        None
    }

    /// The relay's connection has switched protocol (its HELLO answered): the client's
    /// HELLO reply may go once the links have too.
    pub fn main_switched(&mut self, out: &mut BytesMut) {
        if let Some(op) = &mut self.op {
            op.parts = op.parts.saturating_sub(1);
        }
        self.finish_op(out);
    }

    /// Sends HELLO to every link not in `proto`; how many.
    fn switch_proto(&mut self, proto: Proto, client: bool) -> usize {
        let mut switched = 0;
        for link in &mut self.links {
            if link.proto == proto {
                continue;
            }
            let version: &[u8] = if proto == Proto::Resp3 { b"3" } else { b"2" };
            if link
                .commands
                .send(encode::command(&[&b"HELLO"[..], version]))
                .is_ok()
            {
                link.proto = proto;
                link.pending.push_back(Pending {
                    kind: Kind::Swallow,
                    channels: Vec::new(),
                    remaining: 1,
                    client,
                    redirects: 0,
                    sent: Instant::now(),
                });
                switched += 1;
            }
        }
        switched
    }

    /// Waits for a link's frame or the next resubscription try.
    pub async fn wake(&mut self) -> Wake {
        let retry = self.retry_at;
        let stale = self.stale_at();
        tokio::select! {
            event = self.events.recv() => match event {
                Some(event) => Wake::Event(event),
                // `events_tx` lives as long as `self`.
                None => std::future::pending().await,
            },
            _ = sleep_until(retry), if retry.is_some() => Wake::Retry,
            _ = sleep_until(stale), if stale.is_some() => Wake::Stale,
        }
    }

    /// When the oldest unanswered command of a link reaches the command timeout.
    fn stale_at(&self) -> Option<Instant> {
        self.links
            .iter()
            .filter_map(|link| link.pending.front())
            .map(|pending| pending.sent + self.timeout)
            .min()
    }

    /// Links that have left a command unanswered for the command timeout are dropped
    /// (their connection closed) and handled as lost: their channels are subscribed again
    /// elsewhere or later, their client commands fail.
    fn drop_stale(&mut self) {
        let now = Instant::now();
        let stale: Vec<u64> = self
            .links
            .iter()
            .filter(|link| {
                link.pending
                    .front()
                    .is_some_and(|p| p.sent + self.timeout <= now)
            })
            .map(|link| link.id)
            .collect();
        for id in stale {
            tracing::warn!("a shard-channel link did not answer within the command timeout");
            self.closed(id);
        }
    }

    /// Acts on what woke the relay; anything for the client goes to `out`.
    pub async fn handle(&mut self, wake: Wake, proto: Proto, out: &mut BytesMut) {
        match wake {
            Wake::Retry => self.resubscribe(proto, out).await,
            Wake::Stale => self.drop_stale(),
            Wake::Event(Event::Closed(id)) => self.closed(id),
            Wake::Event(Event::Frame(id, frame)) => self.frame(id, frame, proto, out).await,
        }
        self.finish_op(out);
    }

    async fn frame(&mut self, id: u64, frame: Bytes, proto: Proto, out: &mut BytesMut) {
        let Some(index) = self.links.iter().position(|link| link.id == id) else {
            return;
        };
        let address = self.links[index].address.clone();
        let kind = pubsub_kind(&frame);
        let front = self.links[index].pending.front().map(|p| p.kind);
        if front == Some(Kind::Other) && !matches!(kind, Some((b"smessage" | b"sunsubscribe", _))) {
            // The reply to a command sent for the client.
            let pending = self.links[index].pending.pop_front();
            if let Some(op) = &mut self.op {
                match (pending, Redirect::parse(&frame, &address)) {
                    (Some(pending), Some(_)) => {
                        // Redis checks a key's slot before the subscribed context: the
                        // command was known and well formed, and one Redis would have
                        // refused it for the context.
                        let name = pending.channels.first().cloned().unwrap_or_default();
                        replies::not_in_subscribed_context(
                            &mut op.replies,
                            &String::from_utf8_lossy(&name),
                        );
                    }
                    _ => op.replies.extend_from_slice(&frame),
                }
                op.parts = op.parts.saturating_sub(1);
            }
            return;
        }
        if front == Some(Kind::Swallow) && !matches!(kind, Some((b"smessage" | b"sunsubscribe", _)))
        {
            let client = self.links[index]
                .pending
                .pop_front()
                .is_some_and(|p| p.client);
            if let (true, Some(op)) = (client, &mut self.op) {
                op.parts = op.parts.saturating_sub(1);
            }
            return;
        }
        if frame.first() == Some(&b'-') {
            let Some(pending) = self.links[index].pending.pop_front() else {
                tracing::debug!("unexpected error on a shard-channel link");
                return;
            };
            self.refused(pending, frame, &address, proto).await;
            return;
        }
        match kind {
            Some((b"ssubscribe", channel)) => {
                if let Some(channel) = channel {
                    self.confirmed(&channel, &address, index);
                }
                self.advance(index, Kind::Sub);
            }
            Some((b"sunsubscribe", channel)) => {
                // The confirmation the front SUNSUBSCRIBE waits for names its next
                // channel; any other is unasked.
                let asked = match (&channel, self.links[index].pending.front()) {
                    (Some(channel), Some(front)) if front.kind == Kind::Unsub => front
                        .channels
                        .get(front.channels.len() - front.remaining)
                        .is_some_and(|next| next == channel),
                    _ => false,
                };
                if asked {
                    self.advance(index, Kind::Unsub);
                } else if let Some(channel) = channel {
                    // Unasked: the node no longer serves the channel's slot.
                    if self.channels.get(&channel) == Some(&Place::Node(address)) {
                        tracing::debug!("a shard channel's slot moved: subscribing again");
                        self.orphan(channel);
                    }
                }
            }
            _ => out.extend_from_slice(&frame),
        }
    }

    /// One confirmation of the front command on link `index`.
    fn advance(&mut self, index: usize, kind: Kind) {
        let Some(link) = self.links.get_mut(index) else {
            return;
        };
        let Some(front) = link.pending.front_mut() else {
            return;
        };
        if front.kind != kind {
            return;
        }
        front.remaining = front.remaining.saturating_sub(1);
        if front.remaining == 0 {
            let client = front.client;
            link.pending.pop_front();
            if client {
                if let Some(op) = &mut self.op {
                    op.parts = op.parts.saturating_sub(1);
                }
            }
        }
    }

    fn confirmed(&mut self, channel: &Bytes, address: &str, index: usize) {
        match self.channels.get_mut(channel) {
            Some(place) => {
                *place = Place::Node(address.to_owned());
                self.attempts.remove(channel);
            }
            None => {
                // Unsubscribed by the client while the resubscription was on its way.
                self.send(index, Kind::Unsub, vec![channel.clone()], false, 0);
            }
        }
    }

    /// A link's error reply to `pending`: a redirect is followed, anything else fails the
    /// client's command (or leaves the channels orphaned, to be tried again).
    async fn refused(&mut self, pending: Pending, error: Bytes, from: &str, proto: Proto) {
        if pending.kind == Kind::Sub && pending.redirects < MAX_REDIRECTS {
            let redirect = match Redirect::parse(&error, from) {
                Some(Redirect::Moved { address, .. }) => {
                    crate::metrics::global().cluster_moved.increment(1);
                    self.cluster.refresh_soon();
                    Some((address, false))
                }
                Some(Redirect::Ask { address, .. }) => {
                    crate::metrics::global().cluster_ask.increment(1);
                    Some((address, true))
                }
                None => None,
            };
            if let Some((address, asking)) = redirect {
                if let Ok(index) = self.link(&address, proto).await {
                    if asking {
                        self.asking(index);
                    }
                    for channel in &pending.channels {
                        if let Some(place) = self.channels.get_mut(channel) {
                            *place = Place::Sent(address.clone());
                        }
                    }
                    self.send(
                        index,
                        Kind::Sub,
                        pending.channels,
                        pending.client,
                        pending.redirects + 1,
                    );
                    return;
                }
            }
        }
        if pending.kind == Kind::Sub {
            for channel in pending.channels {
                if self.channels.contains_key(&channel) {
                    self.orphan(channel);
                }
            }
        }
        if pending.client {
            if let Some(op) = &mut self.op {
                op.error.get_or_insert(error);
                op.parts = op.parts.saturating_sub(1);
            }
        }
    }

    /// A link is gone: its subscriptions are orphaned, its client parts failed.
    fn closed(&mut self, id: u64) {
        let Some(index) = self.links.iter().position(|link| link.id == id) else {
            return;
        };
        let link = self.links.remove(index);
        tracing::debug!(node = %link.address, "a shard-channel link was lost");
        let lost: Vec<Bytes> = self
            .channels
            .iter()
            .filter(
                |(_, place)| matches!(place, Place::Node(a) | Place::Sent(a) if *a == link.address),
            )
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in lost {
            self.orphan(channel);
        }
        for pending in &link.pending {
            if pending.client {
                if let Some(op) = &mut self.op {
                    if pending.kind != Kind::Unsub && pending.kind != Kind::Swallow {
                        let error = UpstreamError::from(LostReason::ConnectionClosed);
                        op.error.get_or_insert_with(|| proxy_error(&error));
                    }
                    op.parts = op.parts.saturating_sub(1);
                }
            }
        }
    }

    fn orphan(&mut self, channel: Bytes) {
        self.channels.insert(channel, Place::Orphan);
        if self.retry_at.is_none() {
            self.retry_at = Some(Instant::now());
        }
    }

    /// Subscribes the orphaned channels again, each on its slot's master now; a channel
    /// that has used up its tries is given up and the client told.
    async fn resubscribe(&mut self, proto: Proto, out: &mut BytesMut) {
        self.retry_at = None;
        let orphans: Vec<Bytes> = self
            .channels
            .iter()
            .filter(|(_, place)| **place == Place::Orphan)
            .map(|(channel, _)| channel.clone())
            .collect();
        if orphans.is_empty() {
            return;
        }
        // Coalesced with the refreshes other clients ask for.
        if let Err(error) = self.cluster.refresh(false).await {
            tracing::debug!(%error, "slot map refresh for a resubscription failed");
        }
        let mut most = 0;
        for channel in orphans {
            let tries = self.attempts.entry(channel.clone()).or_insert(0);
            *tries += 1;
            let tries = *tries;
            if tries > RESUBSCRIBE_ATTEMPTS {
                tracing::warn!("a shard channel could not be subscribed again: the client is told");
                self.channels.remove(&channel);
                self.attempts.remove(&channel);
                let count = self.channels.len();
                replies::subscription(out, proto, b"sunsubscribe", Some(&channel), count);
                continue;
            }
            most = most.max(tries);
            let linked = self.link_for(slot(&channel), proto).await;
            match linked {
                Ok((index, address)) => {
                    self.channels
                        .insert(channel.clone(), Place::Sent(address.clone()));
                    self.send(index, Kind::Sub, vec![channel], false, 0);
                }
                Err(error) => {
                    tracing::debug!(%error, "resubscription failed; trying again");
                }
            }
        }
        if self.channels.values().any(|place| *place == Place::Orphan) {
            let wait = RETRY_FIRST.saturating_mul(1 << most.min(16)).min(RETRY_MAX);
            self.retry_at = Some(Instant::now() + wait);
        }
    }

    /// The client's command is done: its replies (or its error) go out.
    fn finish_op(&mut self, out: &mut BytesMut) {
        if self.op.as_ref().is_none_or(|op| op.parts > 0) {
            return;
        }
        let Some(op) = self.op.take() else {
            return;
        };
        match op.error {
            None if op.quiet => {}
            None => out.extend_from_slice(&op.replies),
            Some(error) => {
                // As one Redis: an error, and nothing subscribed.
                for channel in op.added {
                    self.attempts.remove(&channel);
                    if let Some(Place::Node(address) | Place::Sent(address)) =
                        self.channels.remove(&channel)
                    {
                        if let Some(index) = self.links.iter().position(|l| l.address == address) {
                            self.send(index, Kind::Unsub, vec![channel], false, 0);
                        }
                    }
                }
                if !op.quiet {
                    out.extend_from_slice(&error);
                }
            }
        }
    }

    /// Writes ASKING on link `index` (its `+OK` swallowed), for the SSUBSCRIBE after it.
    fn asking(&mut self, index: usize) {
        let Some(link) = self.links.get_mut(index) else {
            return;
        };
        let _ = link
            .commands
            .send(Bytes::from_static(b"*1\r\n$6\r\nASKING\r\n"));
        link.pending.push_back(Pending {
            kind: Kind::Swallow,
            channels: Vec::new(),
            remaining: 1,
            client: false,
            redirects: 0,
            sent: Instant::now(),
        });
    }

    /// Writes SSUBSCRIBE/SUNSUBSCRIBE `channels` on link `index`.
    fn send(
        &mut self,
        index: usize,
        kind: Kind,
        channels: Vec<Bytes>,
        client: bool,
        redirects: u8,
    ) {
        let name: &[u8] = if kind == Kind::Sub {
            b"SSUBSCRIBE"
        } else {
            b"SUNSUBSCRIBE"
        };
        let mut args: Vec<&[u8]> = Vec::with_capacity(channels.len() + 1);
        args.push(name);
        args.extend(channels.iter().map(|c| &c[..]));
        let Some(link) = self.links.get_mut(index) else {
            return;
        };
        // Sent or not: a link whose task is gone reports `Closed`, which handles what is
        // pending on it.
        let _ = link.commands.send(encode::command(&args));
        link.pending.push_back(Pending {
            kind,
            remaining: channels.len(),
            channels,
            client,
            redirects,
            sent: Instant::now(),
        });
    }

    /// The link to the master serving `slot` now, and its address.
    async fn link_for(
        &mut self,
        slot: u16,
        proto: Proto,
    ) -> Result<(usize, String), UpstreamError> {
        let address = self.cluster.route(slot).await?.address();
        let index = self.link(&address, proto).await?;
        Ok((index, address))
    }

    /// The link to `address`, opened (and brought to the client's protocol) if needed.
    async fn link(&mut self, address: &str, proto: Proto) -> Result<usize, UpstreamError> {
        if let Some(index) = self.links.iter().position(|l| l.address == address) {
            return Ok(index);
        }
        let mut conn = self.cluster.node(address).pin().await?;
        conn.broken = true;
        let target = ConnState { db: 0, proto };
        if conn.state.proto != proto {
            let mut fix = BytesMut::new();
            let replies = transition(
                &mut fix,
                conn.state,
                ConnState {
                    db: conn.state.db,
                    proto,
                },
            );
            conn.write_all(&[fix.freeze()], Some(self.timeout)).await?;
            for _ in 0..replies {
                let (reply, frame) = conn.read_reply(Some(self.timeout)).await?;
                if frame.error {
                    return Err(UnavailableReason::HelloRefused {
                        reply: crate::upstream::conn::error_text(&reply),
                    }
                    .into());
                }
            }
            conn.state = ConnState {
                db: conn.state.db,
                ..target
            };
        }
        let id = self.next_id;
        self.next_id += 1;
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_link(id, conn, rx, self.events_tx.clone()));
        self.links.push(Link {
            id,
            address: address.to_owned(),
            proto,
            commands,
            pending: VecDeque::new(),
            task,
        });
        Ok(self.links.len() - 1)
    }
}

/// A link's task: writes what the relay sends, reads frames back to it.
async fn run_link(
    id: u64,
    mut conn: Pinned,
    mut commands: mpsc::UnboundedReceiver<Bytes>,
    events: mpsc::Sender<Event>,
) {
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(bytes) => {
                    if conn.write_all(&[bytes], None).await.is_err() {
                        break;
                    }
                }
                None => return,
            },
            filled = conn.fill() => {
                if !matches!(filled, Ok(n) if n > 0) {
                    break;
                }
                loop {
                    match conn.next_frame() {
                        Ok(Some((bytes, _))) => {
                            if events.send(Event::Frame(id, bytes)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            let _ = events.send(Event::Closed(id)).await;
                            return;
                        }
                    }
                }
            }
        }
    }
    let _ = events.send(Event::Closed(id)).await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn group(groups: &mut Vec<(String, Vec<Bytes>)>, address: String, channel: Bytes) {
    match groups.iter_mut().find(|(a, _)| *a == address) {
        Some((_, list)) => list.push(channel),
        None => groups.push((address, vec![channel])),
    }
}

fn proxy_error(error: &UpstreamError) -> Bytes {
    let mut out = BytesMut::new();
    replies::proxy_error(&mut out, &error);
    out.freeze()
}

/// A pub/sub frame's kind and channel: `[kind, channel, …]` as an array or a push.
fn pubsub_kind(frame: &[u8]) -> Option<(&[u8], Option<Bytes>)> {
    let rest = frame.get(1..)?;
    if !matches!(frame.first(), Some(b'*' | b'>')) {
        return None;
    }
    let (_, rest) = line(rest)?;
    let (kind, rest) = bulk(rest)?;
    let channel = match rest.first() {
        Some(b'$') => bulk(rest).and_then(|(c, _)| c).map(Bytes::copy_from_slice),
        _ => None,
    };
    Some((kind?, channel))
}

/// The line at the start of `buf` and what follows it.
fn line(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memmem::find(buf, b"\r\n")?;
    Some((&buf[..end], &buf[end + 2..]))
}

/// A bulk string at the start of `buf` (`None` inside for a null) and what follows it.
fn bulk(buf: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let (header, rest) = line(buf.strip_prefix(b"$")?)?;
    if header == b"-1" {
        return Some((None, rest));
    }
    let len: usize = std::str::from_utf8(header).ok()?.parse().ok()?;
    let data = rest.get(..len)?;
    let rest = rest.get(len..)?.strip_prefix(b"\r\n")?;
    Some((Some(data), rest))
}

/// Sends `request` to the master of its keys' slot (keys in several slots: split and
/// merged as outside relay mode, or Redis Cluster's CROSSSLOT), following redirects;
/// returns the reply to put in its place.
pub async fn routed(
    cluster: &Arc<Cluster>,
    request: &Request,
    slots: &[u16],
    state: ConnState,
    blocking: bool,
) -> Bytes {
    let result = match slots {
        [] => Err(UnavailableReason::NoRoutingKey.into()),
        [one] => single(cluster, request, *one, state, blocking).await,
        _ if matches!(command::spread(&request.args), Some(Spread::BySlot { .. })) => {
            scatter(cluster, request, state).await.map(Bytes::from)
        }
        _ => Ok(Bytes::from_static(replies::CROSSSLOT)),
    };
    result.unwrap_or_else(|error| proxy_error(&error))
}

async fn single(
    cluster: &Arc<Cluster>,
    request: &Request,
    slot: u16,
    state: ConnState,
    blocking: bool,
) -> Result<Bytes, UpstreamError> {
    let node = cluster.route(slot).await?;
    let bytes = match &request.canonical {
        Some(frame) => frame.clone(),
        None => encode::command(&request.args),
    };
    node.count_requests(1);
    let mut replies = if blocking {
        node.call_pinned(state, vec![bytes.clone()], 1).await?
    } else {
        node.call(state, vec![bytes.clone()], 1).await?
    };
    let reply = replies
        .pop()
        .ok_or_else(|| UpstreamError::from(LostReason::NoReply))?;
    let (reply, _) = cluster
        .follow(reply, &bytes, state, &node.address(), blocking)
        .await?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_as_redis_writes_them() {
        let mut out = BytesMut::new();
        replies::subscription(&mut out, Proto::Resp2, b"ssubscribe", Some(b"ch"), 2);
        assert_eq!(&out[..], b"*3\r\n$10\r\nssubscribe\r\n$2\r\nch\r\n:2\r\n");
        out.clear();
        replies::subscription(&mut out, Proto::Resp3, b"sunsubscribe", None, 0);
        assert_eq!(&out[..], b">3\r\n$12\r\nsunsubscribe\r\n_\r\n:0\r\n");
        out.clear();
        replies::subscription(&mut out, Proto::Resp2, b"sunsubscribe", None, 0);
        assert_eq!(&out[..], b"*3\r\n$12\r\nsunsubscribe\r\n$-1\r\n:0\r\n");
    }

    #[test]
    fn pubsub_kinds() {
        let (kind, channel) =
            pubsub_kind(b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n").unwrap();
        assert_eq!(kind, b"smessage");
        assert_eq!(channel.as_deref(), Some(&b"ch"[..]));
        let (kind, channel) =
            pubsub_kind(b">3\r\n$12\r\nsunsubscribe\r\n$1\r\nx\r\n:0\r\n").unwrap();
        assert_eq!(kind, b"sunsubscribe");
        assert_eq!(channel.as_deref(), Some(&b"x"[..]));
        let (kind, channel) = pubsub_kind(b"*3\r\n$12\r\nsunsubscribe\r\n$-1\r\n:0\r\n").unwrap();
        assert_eq!(kind, b"sunsubscribe");
        assert_eq!(channel, None);
        assert!(pubsub_kind(b"+OK\r\n").is_none());
        assert!(pubsub_kind(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n").is_some());
        assert!(pubsub_kind(b"*3\r\n$9\r\nsubscr").is_none());
    }
}

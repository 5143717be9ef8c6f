//! The upstream the fuzzed sessions talk to: a small in-process stand-in for Redis. It is
//! not a model of Redis's data commands — every command it does not know is answered with
//! a bulk string naming the database and protocol the connection was in and a hash of the
//! exact arguments it received ([`digest`]) — but it keeps the connection state the proxy
//! must manage (database, protocol, MULTI queue, subscriptions, CLIENT REPLY) the way Redis
//! does, so the model (`model.rs`) can predict every reply byte for byte: a forwarded
//! command whose reply names the wrong database or protocol, or arrives in the wrong place,
//! breaks a property.
//!
//! The model runs the same [`FakeConn::execute`] on a connection in the state the client's
//! request should find, which is what "the proxy forwarded it correctly" means.

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use redis_ambassador::protocol::{RequestLimits, RequestScanner, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a command gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Reply(Vec<u8>),
    /// No reply (CLIENT REPLY OFF / SKIP).
    Silent,
    /// This reply, then the connection closes (QUIT).
    Close(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyMode {
    On,
    Off,
    /// The next command's reply is suppressed.
    Skip,
}

/// One upstream connection's state.
#[derive(Debug, Clone)]
pub struct FakeConn {
    pub db: u32,
    pub proto: u8,
    multi: Option<Vec<Vec<Bytes>>>,
    channels: BTreeSet<Bytes>,
    patterns: BTreeSet<Bytes>,
    shard_channels: BTreeSet<Bytes>,
    reply: ReplyMode,
    /// The command being run is a CLIENT REPLY that was not refused.
    ran_client_reply: bool,
}

pub const DATABASES: u32 = 16;
pub const VERSION: &str = "7.2.4";

const ERR_NESTED_MULTI: &[u8] = b"-ERR MULTI calls can not be nested\r\n";
const ERR_WATCH_IN_MULTI: &[u8] = b"-ERR WATCH inside MULTI is not allowed\r\n";

/// The reply to a command the fake does not interpret.
pub fn digest(args: &[Bytes], db: u32, proto: u8) -> Vec<u8> {
    let hash = crate::fnv(&encode::command(args));
    let text = format!(
        "fwd db={db} proto={proto} argc={} h={hash:016x}",
        args.len()
    );
    bulk(text.as_bytes())
}

pub fn bulk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// Redis's `string2ll`: an optional `-`, then digits without a leading zero (or `0`).
pub fn redis_int(s: &[u8]) -> Option<i64> {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits[0] == b'0' && (digits.len() > 1 || s.len() != digits.len()) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn lower(name: &[u8]) -> Vec<u8> {
    name.to_ascii_lowercase()
}

impl Default for FakeConn {
    fn default() -> Self {
        FakeConn::at(0, 2)
    }
}

impl FakeConn {
    /// A connection in this database and protocol, with nothing else going on.
    pub fn at(db: u32, proto: u8) -> FakeConn {
        FakeConn {
            db,
            proto,
            multi: None,
            channels: BTreeSet::new(),
            patterns: BTreeSet::new(),
            shard_channels: BTreeSet::new(),
            reply: ReplyMode::On,
            ran_client_reply: false,
        }
    }

    fn subscribed(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shard_channels.is_empty())
    }

    /// Runs one command, as Redis would on this connection.
    pub fn execute(&mut self, args: &[Bytes]) -> Answer {
        let name = lower(&args[0]);
        let mode = self.reply;
        self.ran_client_reply = false;
        let answer = self.run(&name, args);
        // CLIENT REPLY sets the mode itself; pub/sub confirmations are pushes, which Redis
        // sends whatever the reply mode (a refused CLIENT REPLY or SUBSCRIBE is not exempt).
        let push = matches!(
            &name[..],
            b"subscribe"
                | b"psubscribe"
                | b"ssubscribe"
                | b"unsubscribe"
                | b"punsubscribe"
                | b"sunsubscribe"
        ) && matches!(&answer, Answer::Reply(r) if r.starts_with(b"*3") || r.starts_with(b">3"));
        if self.ran_client_reply || push {
            if push && mode == ReplyMode::Skip {
                self.reply = ReplyMode::On;
            }
            return answer;
        }
        let silenced = match mode {
            ReplyMode::On => false,
            // RESET turns OFF back on before it replies (clearClientConnectionState)...
            ReplyMode::Off => self.reply == ReplyMode::Off,
            // ...but the reply of the command a SKIP applies to is dropped, RESET's too.
            ReplyMode::Skip => {
                self.reply = ReplyMode::On;
                true
            }
        };
        match answer {
            Answer::Close(_) if silenced => Answer::Close(Vec::new()),
            _ if silenced => Answer::Silent,
            answer => answer,
        }
    }

    fn run(&mut self, name: &[u8], args: &[Bytes]) -> Answer {
        let immediate = matches!(
            name,
            b"exec" | b"discard" | b"multi" | b"watch" | b"quit" | b"reset"
        );
        if let Some(queue) = self.multi.as_mut() {
            if !immediate {
                queue.push(args.to_vec());
                return Answer::Reply(b"+QUEUED\r\n".to_vec());
            }
        }
        if self.proto == 2
            && self.subscribed()
            && !matches!(
                name,
                b"subscribe"
                    | b"psubscribe"
                    | b"ssubscribe"
                    | b"unsubscribe"
                    | b"punsubscribe"
                    | b"sunsubscribe"
                    | b"ping"
                    | b"quit"
                    | b"reset"
            )
        {
            let mut text = b"-ERR Can't execute '".to_vec();
            text.extend(
                name.iter()
                    .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
            text.extend_from_slice(
                b"': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed \
                  in this context\r\n",
            );
            return Answer::Reply(text);
        }
        let reply = match name {
            b"hello" => {
                match args.get(1).map(|v| redis_int(v)) {
                    None => {}
                    Some(Some(2)) => self.proto = 2,
                    Some(Some(3)) => self.proto = 3,
                    Some(_) => {
                        return Answer::Reply(
                            b"-NOPROTO unsupported protocol version\r\n".to_vec(),
                        );
                    }
                }
                self.hello_reply()
            }
            b"auth" => b"+OK\r\n".to_vec(),
            b"config"
                if args.len() == 3
                    && args[1].eq_ignore_ascii_case(b"get")
                    && &args[2][..] == b"databases" =>
            {
                b"*2\r\n$9\r\ndatabases\r\n$2\r\n16\r\n".to_vec()
            }
            b"select" => match args.get(1).and_then(|a| redis_int(a)) {
                _ if args.len() != 2 => arity("select"),
                Some(n) if (0..i64::from(DATABASES)).contains(&n) => {
                    self.db = n as u32;
                    b"+OK\r\n".to_vec()
                }
                Some(n) if i32::try_from(n).is_ok() => {
                    b"-ERR DB index is out of range\r\n".to_vec()
                }
                _ => b"-ERR value is not an integer or out of range\r\n".to_vec(),
            },
            b"multi" if self.multi.is_some() => ERR_NESTED_MULTI.to_vec(),
            b"multi" => {
                self.multi = Some(Vec::new());
                b"+OK\r\n".to_vec()
            }
            b"exec" => match self.multi.take() {
                None => b"-ERR EXEC without MULTI\r\n".to_vec(),
                Some(queue) => {
                    let mut out = format!("*{}\r\n", queue.len()).into_bytes();
                    for queued in queue {
                        out.extend_from_slice(&self.in_exec(&queued));
                    }
                    out
                }
            },
            b"discard" => match self.multi.take() {
                None => b"-ERR DISCARD without MULTI\r\n".to_vec(),
                Some(_) => b"+OK\r\n".to_vec(),
            },
            b"watch" if self.multi.is_some() => ERR_WATCH_IN_MULTI.to_vec(),
            b"watch" | b"unwatch" => b"+OK\r\n".to_vec(),
            b"quit" => return Answer::Close(b"+OK\r\n".to_vec()),
            b"reset" => {
                *self = FakeConn::default();
                b"+RESET\r\n".to_vec()
            }
            b"ping" => {
                if args.len() > 2 {
                    arity("ping")
                } else if self.proto == 2 && self.subscribed() {
                    let mut out = b"*2\r\n$4\r\npong\r\n".to_vec();
                    out.extend_from_slice(&bulk(args.get(1).map_or(&b""[..], |m| &m[..])));
                    out
                } else {
                    match args.get(1) {
                        None => b"+PONG\r\n".to_vec(),
                        Some(m) => bulk(m),
                    }
                }
            }
            b"echo" if args.len() == 2 => bulk(&args[1]),
            b"echo" => arity("echo"),
            b"subscribe" | b"psubscribe" | b"ssubscribe" if args.len() > 1 => {
                let mut out = Vec::new();
                for channel in &args[1..] {
                    let count = match name {
                        b"subscribe" => {
                            self.channels.insert(channel.clone());
                            self.channels.len() + self.patterns.len()
                        }
                        b"psubscribe" => {
                            self.patterns.insert(channel.clone());
                            self.channels.len() + self.patterns.len()
                        }
                        _ => {
                            self.shard_channels.insert(channel.clone());
                            self.shard_channels.len()
                        }
                    };
                    out.extend_from_slice(&self.subscription(name, Some(channel), count));
                }
                out
            }
            b"unsubscribe" | b"punsubscribe" | b"sunsubscribe" => {
                let targets: Vec<Bytes> = if args.len() > 1 {
                    args[1..].to_vec()
                } else {
                    match name {
                        b"unsubscribe" => self.channels.iter().cloned().collect(),
                        b"punsubscribe" => self.patterns.iter().cloned().collect(),
                        _ => self.shard_channels.iter().cloned().collect(),
                    }
                };
                let mut out = Vec::new();
                if targets.is_empty() {
                    out.extend_from_slice(&self.subscription(name, None, self.count_for(name)));
                }
                // One reply per channel, with the count after its removal, as Redis does.
                for channel in &targets {
                    match name {
                        b"unsubscribe" => self.channels.remove(channel),
                        b"punsubscribe" => self.patterns.remove(channel),
                        _ => self.shard_channels.remove(channel),
                    };
                    out.extend_from_slice(&self.subscription(
                        name,
                        Some(channel),
                        self.count_for(name),
                    ));
                }
                out
            }
            b"monitor" => b"+OK\r\n".to_vec(),
            b"client" if args.len() == 3 && args[1].eq_ignore_ascii_case(b"reply") => {
                self.ran_client_reply = true;
                let mode = &args[2];
                if mode.eq_ignore_ascii_case(b"on") {
                    self.reply = ReplyMode::On;
                    b"+OK\r\n".to_vec()
                } else if mode.eq_ignore_ascii_case(b"off") {
                    self.reply = ReplyMode::Off;
                    return Answer::Silent;
                } else if mode.eq_ignore_ascii_case(b"skip") {
                    if self.reply == ReplyMode::On {
                        self.reply = ReplyMode::Skip;
                    }
                    return Answer::Silent;
                } else {
                    b"-ERR syntax error\r\n".to_vec()
                }
            }
            _ => digest(args, self.db, self.proto),
        };
        Answer::Reply(reply)
    }

    /// A queued command, run by EXEC: no queueing, no mode changes beyond the database.
    pub fn in_exec(&mut self, args: &[Bytes]) -> Vec<u8> {
        let name = lower(&args[0]);
        match &name[..] {
            b"select" | b"ping" | b"echo" | b"config" | b"unwatch" => match self.run(&name, args) {
                Answer::Reply(r) | Answer::Close(r) => r,
                Answer::Silent => Vec::new(),
            },
            _ => digest(args, self.db, self.proto),
        }
    }

    fn count_for(&self, name: &[u8]) -> usize {
        if matches!(name, b"ssubscribe" | b"sunsubscribe") {
            self.shard_channels.len()
        } else {
            self.channels.len() + self.patterns.len()
        }
    }

    fn subscription(&self, kind: &[u8], channel: Option<&Bytes>, count: usize) -> Vec<u8> {
        let mut out = if self.proto == 3 {
            b">3\r\n".to_vec()
        } else {
            b"*3\r\n".to_vec()
        };
        out.extend_from_slice(&bulk(kind));
        match channel {
            Some(c) => out.extend_from_slice(&bulk(c)),
            None if self.proto == 3 => out.extend_from_slice(b"_\r\n"),
            None => out.extend_from_slice(b"$-1\r\n"),
        }
        out.extend_from_slice(format!(":{count}\r\n").as_bytes());
        out
    }

    fn hello_reply(&self) -> Vec<u8> {
        let mut out = if self.proto == 3 {
            b"%7\r\n".to_vec()
        } else {
            b"*14\r\n".to_vec()
        };
        for (k, v) in [("server", "redis"), ("version", VERSION)] {
            out.extend_from_slice(&bulk(k.as_bytes()));
            out.extend_from_slice(&bulk(v.as_bytes()));
        }
        out.extend_from_slice(&bulk(b"proto"));
        out.extend_from_slice(format!(":{}\r\n", self.proto).as_bytes());
        out.extend_from_slice(&bulk(b"id"));
        out.extend_from_slice(b":1\r\n");
        for (k, v) in [("mode", "standalone"), ("role", "master")] {
            out.extend_from_slice(&bulk(k.as_bytes()));
            out.extend_from_slice(&bulk(v.as_bytes()));
        }
        out.extend_from_slice(&bulk(b"modules"));
        out.extend_from_slice(b"*0\r\n");
        out
    }
}

fn arity(name: &str) -> Vec<u8> {
    format!("-ERR wrong number of arguments for '{name}' command\r\n").into_bytes()
}

/// Accepts upstream connections for as long as the runtime lives.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_conn(stream));
    }
}

async fn serve_conn(mut stream: TcpStream) {
    let mut conn = FakeConn::default();
    let mut scanner = RequestScanner::new(RequestLimits::default());
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut out = Vec::new();
        let mut close = false;
        loop {
            match scanner.next(&mut buf, false) {
                Ok(Some(request)) => match conn.execute(&request.args) {
                    Answer::Reply(r) => out.extend_from_slice(&r),
                    Answer::Silent => {}
                    Answer::Close(r) => {
                        out.extend_from_slice(&r);
                        close = true;
                        break;
                    }
                },
                Ok(None) => break,
                Err(_) => {
                    close = true;
                    break;
                }
            }
        }
        if stream.write_all(&out).await.is_err() || close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

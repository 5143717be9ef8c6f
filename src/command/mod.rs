//! The command table: plain data saying, for the commands the proxy must treat specially,
//! whether they are answered locally, need a dedicated (pinned) upstream connection, put
//! the connection in a push mode, are refused, or are forwarded. Lookup is
//! case-insensitive and allocation-free. Everything not in the table is forwarded.
//!
//! This module classifies; it does not act. `session` decides what each class means.

mod names;
pub mod rules;

pub use names::NAMES;

/// A command's index in [`NAMES`], or [`CommandId::OTHER`]: the metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandId(u16);

impl CommandId {
    /// Any name not in the table.
    pub const OTHER: CommandId = CommandId(u16::MAX);

    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// The label value: the command's lower-case name, or `other`.
    pub fn name(self) -> &'static str {
        NAMES.get(self.index()).copied().unwrap_or("other")
    }
}

/// The id of a command name, case-insensitively, without allocating.
pub fn id(name: &[u8]) -> CommandId {
    let mut buf = [0u8; MAX_NAME];
    match lowercase(name, &mut buf) {
        Some(lower) => id_of_lower(lower),
        None => CommandId::OTHER,
    }
}

fn id_of_lower(lower: &[u8]) -> CommandId {
    match NAMES.binary_search_by(|probe| probe.as_bytes().cmp(lower)) {
        Ok(index) => u16::try_from(index).map_or(CommandId::OTHER, CommandId),
        Err(_) => CommandId::OTHER,
    }
}

/// What the proxy does with a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Answered by the session (AUTH, HELLO, SELECT, …).
    Local(Local),
    /// Starts a transaction: the client is pinned to one upstream connection until EXEC or
    /// DISCARD.
    Multi,
    /// Watches keys: pinned until EXEC, DISCARD or UNWATCH.
    Watch,
    /// Blocks on the server (BLPOP, BLMOVE, …): runs on a dedicated connection, with no
    /// proxy timeout.
    Blocking,
    /// WAIT / WAITAOF: blocking, and counts the replicas that have the writes of the
    /// connection it runs on, so the client's writes (made on other connections) must be
    /// fenced onto that connection first.
    WaitReplicas,
    /// The SUBSCRIBE family: puts the connection in pub/sub mode; the client is relayed
    /// to a dedicated connection, frame for frame, while the mode lasts.
    Subscribe(Channels),
    /// MONITOR: relayed like the SUBSCRIBE family, for as long as the client stays.
    Monitor,
    /// SYNC / PSYNC: the client becomes a replica. Its connection is joined, byte for
    /// byte, to an upstream connection of its own (authenticated by the proxy) for as long
    /// as both stay open: the RDB payload and the replication stream are not RESP replies.
    Replication,
    /// SCRIPT KILL, FUNCTION KILL, FUNCTION STATS, SHUTDOWN: what Redis runs while a
    /// script is busy. Sent on a connection of their own, in any database (they need
    /// none), so they never queue behind the busy script on a shared lane (see
    /// [`interrupts`]).
    Interrupt,
    /// XREAD / XREADGROUP: stateful only with the BLOCK option.
    StreamRead,
    /// Redis closes the connection without a reply (`POST`, `Host:`): an HTTP request.
    HttpProbe,
    /// Sent to the upstream.
    Forward,
}

/// Which channels a SUBSCRIBE-family command is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channels {
    /// Classic channels and patterns (SUBSCRIBE, PSUBSCRIBE and their UNSUBSCRIBEs).
    Classic,
    /// Shard channels (SSUBSCRIBE, SUNSUBSCRIBE): in a cluster, on their slot's master.
    Shard,
}

impl Kind {
    /// Cluster mode: whether a command of this kind is routed by its keys (to its slot's
    /// node) rather than answered or handled on its own.
    pub fn routed(self) -> bool {
        matches!(
            self,
            Kind::Forward
                | Kind::Blocking
                | Kind::WaitReplicas
                | Kind::StreamRead
                | Kind::Interrupt
        )
    }

    /// Whether a command of this kind may block on the server (XREAD/XREADGROUP only with
    /// BLOCK: see [`stream_read_blocks`]).
    pub fn may_block(self, args: &[bytes::Bytes]) -> bool {
        match self {
            Kind::Blocking | Kind::WaitReplicas => true,
            Kind::StreamRead => stream_read_blocks(args),
            _ => false,
        }
    }

    /// Whether the command puts its connection in a push mode (pub/sub, MONITOR).
    pub fn is_relayed(self) -> bool {
        matches!(self, Kind::Subscribe(_) | Kind::Monitor)
    }
}

/// The commands the session answers itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    Auth,
    Hello,
    Select,
    Ping,
    Echo,
    Quit,
    Reset,
    Client,
    /// INFO: Redis's, with the clients section counting the application's connections.
    Info,
    Exec,
    Discard,
    Unwatch,
}

/// A row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// The lower-case name, as Redis prints it in errors.
    pub name: &'static str,
    pub kind: Kind,
    /// Redis's arity: `n` means exactly n arguments (with the name), `-n` at least n.
    pub arity: i32,
}

const fn row(name: &'static str, kind: Kind, arity: i32) -> Command {
    Command { name, kind, arity }
}

/// Longest name in the table; longer names cannot match.
const MAX_NAME: usize = 24;

/// Lower-cases `name` into `buf` when it fits; `None` when it is too long to be in a table.
fn lowercase<'a>(name: &[u8], buf: &'a mut [u8; MAX_NAME]) -> Option<&'a [u8]> {
    let out = buf.get_mut(..name.len())?;
    for (o, b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

/// A request's command, classified once: its metrics id and, for the commands the proxy
/// treats specially, its row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classified {
    pub id: CommandId,
    pub command: Option<Command>,
}

/// Classifies a command by its name: one lower-casing, one search of [`NAMES`], one match.
pub fn classify(name: &[u8]) -> Classified {
    let mut buf = [0u8; MAX_NAME];
    match lowercase(name, &mut buf) {
        Some(lower) => Classified {
            id: id_of_lower(lower),
            command: row_of(lower),
        },
        None => Classified {
            id: CommandId::OTHER,
            command: None,
        },
    }
}

/// Classifies a command by its name (its row of the table only; see [`classify`]).
pub fn lookup(name: &[u8]) -> Option<Command> {
    let mut buf = [0u8; MAX_NAME];
    row_of(lowercase(name, &mut buf)?)
}

/// The table's row for a lower-case name.
fn row_of(lower: &[u8]) -> Option<Command> {
    use Kind::*;
    Some(match lower {
        b"auth" => row("auth", Local(self::Local::Auth), -2),
        b"hello" => row("hello", Local(self::Local::Hello), -1),
        b"select" => row("select", Local(self::Local::Select), 2),
        b"ping" => row("ping", Local(self::Local::Ping), -1),
        b"echo" => row("echo", Local(self::Local::Echo), 2),
        b"quit" => row("quit", Local(self::Local::Quit), -1),
        b"reset" => row("reset", Local(self::Local::Reset), 1),
        b"client" => row("client", Local(self::Local::Client), -2),
        b"info" => row("info", Local(self::Local::Info), -1),
        b"exec" => row("exec", Local(self::Local::Exec), 1),
        b"discard" => row("discard", Local(self::Local::Discard), 1),
        b"unwatch" => row("unwatch", Local(self::Local::Unwatch), 1),
        b"multi" => row("multi", Multi, 1),
        b"watch" => row("watch", Watch, -2),
        b"blpop" => row("blpop", Blocking, -3),
        b"brpop" => row("brpop", Blocking, -3),
        b"brpoplpush" => row("brpoplpush", Blocking, 4),
        b"blmove" => row("blmove", Blocking, 6),
        b"blmpop" => row("blmpop", Blocking, -5),
        b"bzpopmin" => row("bzpopmin", Blocking, -3),
        b"bzpopmax" => row("bzpopmax", Blocking, -3),
        b"bzmpop" => row("bzmpop", Blocking, -5),
        b"wait" => row("wait", WaitReplicas, 3),
        b"waitaof" => row("waitaof", WaitReplicas, 4),
        b"subscribe" => row("subscribe", Subscribe(Channels::Classic), -2),
        b"psubscribe" => row("psubscribe", Subscribe(Channels::Classic), -2),
        b"ssubscribe" => row("ssubscribe", Subscribe(Channels::Shard), -2),
        b"unsubscribe" => row("unsubscribe", Subscribe(Channels::Classic), -1),
        b"punsubscribe" => row("punsubscribe", Subscribe(Channels::Classic), -1),
        b"sunsubscribe" => row("sunsubscribe", Subscribe(Channels::Shard), -1),
        b"monitor" => row("monitor", Monitor, 1),
        b"sync" => row("sync", Replication, 1),
        b"psync" => row("psync", Replication, -3),
        b"script" => row("script", Interrupt, -2),
        b"function" => row("function", Interrupt, -2),
        b"shutdown" => row("shutdown", Interrupt, -1),
        b"xread" => row("xread", StreamRead, -4),
        b"xreadgroup" => row("xreadgroup", StreamRead, -7),
        b"post" => row("post", HttpProbe, -1),
        b"host:" => row("host:", HttpProbe, -1),
        _ => return None,
    })
}

/// What the session does with a CLIENT subcommand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientSub {
    GetName,
    SetName,
    Id,
    Info,
    SetInfo,
    /// CLIENT LIST: the application's connections, from the session registry.
    List,
    /// CLIENT KILL: closes the application's connections (the registry's).
    Kill,
    /// CLIENT NO-EVICT: kept per client, applied on its dedicated connection.
    NoEvict,
    /// CLIENT NO-TOUCH: the client's commands run on a dedicated connection while it is on.
    NoTouch,
    /// CLIENT TRACKING: with ON, relayed on a dedicated connection; REDIRECT names a
    /// client of the ambassador.
    Tracking,
    /// CLIENT REPLY: with OFF or SKIP, relayed on a dedicated connection.
    Reply,
    /// CLIENT GETREDIR and CLIENT TRACKINGINFO: the redirect they show is the
    /// ambassador's client id, not the upstream connection's.
    GetRedir,
    TrackingInfo,
    /// CLIENT UNBLOCK: the id is a client of the ambassador, blocked on its own connection.
    Unblock,
    Forward,
}

/// A CLIENT subcommand row: what to do, its full name for errors, its arity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subcommand {
    pub full_name: &'static str,
    pub kind: ClientSub,
    pub arity: i32,
    /// The row's place in the table, for [`client_subcommand_name`].
    pub index: u16,
}

/// The CLIENT subcommands Redis knows: name, full name, kind, arity.
const CLIENT_SUBCOMMANDS: &[(&[u8], &str, ClientSub, i32)] = &[
    (b"getname", "client|getname", ClientSub::GetName, 2),
    (b"setname", "client|setname", ClientSub::SetName, 3),
    (b"id", "client|id", ClientSub::Id, 2),
    (b"info", "client|info", ClientSub::Info, 2),
    (b"setinfo", "client|setinfo", ClientSub::SetInfo, 4),
    (b"caching", "client|caching", ClientSub::Forward, 3),
    (b"no-evict", "client|no-evict", ClientSub::NoEvict, 3),
    (b"no-touch", "client|no-touch", ClientSub::NoTouch, 3),
    (b"reply", "client|reply", ClientSub::Reply, 3),
    (b"tracking", "client|tracking", ClientSub::Tracking, -3),
    (b"getredir", "client|getredir", ClientSub::GetRedir, 2),
    (b"help", "client|help", ClientSub::Forward, 2),
    (b"kill", "client|kill", ClientSub::Kill, -3),
    (b"list", "client|list", ClientSub::List, -2),
    (b"pause", "client|pause", ClientSub::Forward, -3),
    (
        b"trackinginfo",
        "client|trackinginfo",
        ClientSub::TrackingInfo,
        2,
    ),
    (b"unblock", "client|unblock", ClientSub::Unblock, -3),
    (b"unpause", "client|unpause", ClientSub::Forward, 2),
];

/// Classifies `CLIENT <sub>`; `None` for a subcommand Redis does not know.
pub fn client_subcommand(sub: &[u8]) -> Option<Subcommand> {
    let mut buf = [0u8; MAX_NAME];
    let lower = lowercase(sub, &mut buf)?;
    let index = CLIENT_SUBCOMMANDS
        .iter()
        .position(|(name, ..)| *name == lower)?;
    let (_, full_name, kind, arity) = CLIENT_SUBCOMMANDS[index];
    Some(Subcommand {
        full_name,
        kind,
        arity,
        index: u16::try_from(index).ok()?,
    })
}

/// The full name (`client|list`) of the subcommand at `index` (see [`Subcommand::index`]).
pub fn client_subcommand_name(index: u16) -> Option<&'static str> {
    CLIENT_SUBCOMMANDS
        .get(usize::from(index))
        .map(|(_, full_name, ..)| *full_name)
}

/// How the replies of a command that several cluster nodes answer combine into one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Elements of arrays, put back in key order (MGET).
    Elements,
    /// Integers, added (DEL, UNLINK, EXISTS, TOUCH, DBSIZE).
    Sum,
    /// Elements of arrays, concatenated (KEYS).
    Concat,
    /// The same reply from every node, or the first error (MSET, FLUSHALL, SCRIPT LOAD).
    Agree,
    /// SCAN: one master at a time.
    Scan,
}

/// Cluster mode: how a command is answered when one node cannot answer it alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    /// Keys in several slots are split by slot; `width` arguments make one key's share
    /// (MSET: key and value).
    BySlot { merge: Merge, width: usize },
    /// A keyless command every master runs.
    EveryMaster(Merge),
}

/// The commands of [`Spread`]: name, subcommand (any when `None`), and what to do. Any
/// other command with keys in several slots gets Redis Cluster's `-CROSSSLOT`.
const SPREAD: &[(&str, Option<&str>, Spread)] = &[
    (
        "mget",
        None,
        Spread::BySlot {
            merge: Merge::Elements,
            width: 1,
        },
    ),
    (
        "mset",
        None,
        Spread::BySlot {
            merge: Merge::Agree,
            width: 2,
        },
    ),
    (
        "del",
        None,
        Spread::BySlot {
            merge: Merge::Sum,
            width: 1,
        },
    ),
    (
        "unlink",
        None,
        Spread::BySlot {
            merge: Merge::Sum,
            width: 1,
        },
    ),
    (
        "exists",
        None,
        Spread::BySlot {
            merge: Merge::Sum,
            width: 1,
        },
    ),
    (
        "touch",
        None,
        Spread::BySlot {
            merge: Merge::Sum,
            width: 1,
        },
    ),
    ("dbsize", None, Spread::EveryMaster(Merge::Sum)),
    ("keys", None, Spread::EveryMaster(Merge::Concat)),
    ("flushall", None, Spread::EveryMaster(Merge::Agree)),
    ("flushdb", None, Spread::EveryMaster(Merge::Agree)),
    ("script", Some("load"), Spread::EveryMaster(Merge::Agree)),
    ("script", Some("flush"), Spread::EveryMaster(Merge::Agree)),
    ("function", Some("load"), Spread::EveryMaster(Merge::Agree)),
    ("function", Some("flush"), Spread::EveryMaster(Merge::Agree)),
    (
        "function",
        Some("delete"),
        Spread::EveryMaster(Merge::Agree),
    ),
    ("scan", None, Spread::EveryMaster(Merge::Scan)),
];

/// Cluster mode: whether (and how) a command is answered by several nodes (see
/// `SPREAD`); `args` is the whole request, name first.
pub fn spread(args: &[bytes::Bytes]) -> Option<Spread> {
    let name = args.first()?;
    let sub = args.get(1);
    SPREAD.iter().find_map(|(n, s, spread)| {
        let matches = name.eq_ignore_ascii_case(n.as_bytes())
            && s.is_none_or(|s| sub.is_some_and(|sub| sub.eq_ignore_ascii_case(s.as_bytes())));
        matches.then_some(*spread)
    })
}

/// Whether `argc` arguments satisfy Redis's `arity`.
pub fn arity_ok(arity: i32, argc: usize) -> bool {
    let argc = i64::try_from(argc).unwrap_or(i64::MAX);
    let arity = i64::from(arity);
    if arity >= 0 {
        argc == arity
    } else {
        argc >= -arity
    }
}

/// Whether a command of [`Kind::Interrupt`]'s rows is one Redis runs while a script is
/// busy (SCRIPT KILL, FUNCTION KILL, FUNCTION STATS, SHUTDOWN); the other SCRIPT and
/// FUNCTION subcommands are forwarded as usual.
pub fn interrupts(args: &[bytes::Bytes]) -> bool {
    match (args.first(), args.get(1)) {
        (Some(name), _) if name.eq_ignore_ascii_case(b"shutdown") => true,
        (Some(name), Some(sub)) => {
            args.len() == 2
                && (sub.eq_ignore_ascii_case(b"kill")
                    || (name.eq_ignore_ascii_case(b"function")
                        && sub.eq_ignore_ascii_case(b"stats")))
        }
        _ => false,
    }
}

/// Whether a command may keep Redis busy for long whatever its arguments look like (a
/// script, DEBUG, KEYS, a synchronous flush or save): a shared lane that carries one is
/// passed over by the batches that come after it, which then get Redis's own answer
/// (`-BUSY` while a script runs) instead of waiting behind it.
pub fn may_hold_lane(id: CommandId) -> bool {
    matches!(
        id.name(),
        "eval"
            | "evalsha"
            | "eval_ro"
            | "evalsha_ro"
            | "fcall"
            | "fcall_ro"
            | "debug"
            | "keys"
            | "flushall"
            | "flushdb"
            | "save"
            | "migrate"
    )
}

/// Whether an XREAD/XREADGROUP's arguments ask to block (a BLOCK option before STREAMS).
pub fn stream_read_blocks(args: &[bytes::Bytes]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| !a.eq_ignore_ascii_case(b"streams"))
        .any(|a| a.eq_ignore_ascii_case(b"block"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive() {
        assert_eq!(lookup(b"AuTh").unwrap().kind, Kind::Local(Local::Auth));
        assert_eq!(lookup(b"HOST:").unwrap().kind, Kind::HttpProbe);
        assert_eq!(lookup(b"get"), None);
        assert_eq!(lookup(b"a-name-much-longer-than-any-in-the-table"), None);
        assert_eq!(lookup(b""), None);
    }

    #[test]
    fn names_fit_the_lookup_buffer() {
        for name in ["brpoplpush", "punsubscribe", "sunsubscribe", "xreadgroup"] {
            assert!(name.len() <= MAX_NAME);
            assert_eq!(lookup(name.as_bytes()).unwrap().name, name);
        }
        let sub = client_subcommand(b"TRACKINGINFO").unwrap();
        assert_eq!(sub.full_name, "client|trackinginfo");
        assert_eq!(
            client_subcommand_name(sub.index),
            Some("client|trackinginfo")
        );
        assert!(CLIENT_SUBCOMMANDS.iter().all(|(n, ..)| n.len() <= MAX_NAME));
    }

    #[test]
    fn ids() {
        assert!(
            NAMES.windows(2).all(|w| w[0] < w[1]),
            "NAMES must stay sorted"
        );
        assert!(NAMES.iter().all(|n| n.len() <= MAX_NAME));
        assert_eq!(id(b"GET").name(), "get");
        assert_eq!(id(b"georadiusbymember_ro").name(), "georadiusbymember_ro");
        assert_eq!(id(b"nosuchcommand"), CommandId::OTHER);
        assert_eq!(id(b"").name(), "other");
        assert_eq!(id(&[b'a'; 100]), CommandId::OTHER);
    }

    #[test]
    fn arity() {
        assert!(arity_ok(2, 2) && !arity_ok(2, 3) && !arity_ok(2, 1));
        assert!(arity_ok(-2, 2) && arity_ok(-2, 5) && !arity_ok(-2, 1));
    }

    #[test]
    fn blocking_stream_reads() {
        let args = |s: &str| {
            s.split(' ')
                .map(|a| bytes::Bytes::copy_from_slice(a.as_bytes()))
                .collect::<Vec<_>>()
        };
        assert!(stream_read_blocks(&args(
            "XREAD COUNT 1 BLOCK 0 STREAMS s 0"
        )));
        assert!(!stream_read_blocks(&args("XREAD COUNT 1 STREAMS block 0")));
        assert!(stream_read_blocks(&args(
            "xreadgroup GROUP g c block 10 STREAMS s >"
        )));
    }
}

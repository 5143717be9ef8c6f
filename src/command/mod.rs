//! The command table: plain data saying, for the commands the proxy must treat specially,
//! whether they are answered locally, need a dedicated (pinned) upstream connection, put
//! the connection in a push mode, are refused, or are forwarded. Lookup is
//! case-insensitive and allocation-free. Everything not in the table is forwarded.
//!
//! This module classifies; it does not act. `session` decides what each class means.

mod names;

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
    let Some(lower) = lowercase(name, &mut buf) else {
        return CommandId::OTHER;
    };
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
    /// Blocks on the server (BLPOP, WAIT, …): runs on a dedicated connection, with no
    /// proxy timeout.
    Blocking,
    /// Puts the connection in a push mode (SUBSCRIBE family, MONITOR): the client is
    /// relayed to a dedicated connection, frame for frame, while the mode lasts.
    Relay,
    /// Cannot work through a proxy (replication handshakes): refused with a clear error.
    Refused,
    /// XREAD / XREADGROUP: stateful only with the BLOCK option.
    StreamRead,
    /// Redis closes the connection without a reply (`POST`, `Host:`): an HTTP request.
    HttpProbe,
    /// Sent to the upstream.
    Forward,
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

/// Classifies a command by its name.
pub fn lookup(name: &[u8]) -> Option<Command> {
    use Kind::*;
    let mut buf = [0u8; MAX_NAME];
    let lower = lowercase(name, &mut buf)?;
    Some(match lower {
        b"auth" => row("auth", Local(self::Local::Auth), -2),
        b"hello" => row("hello", Local(self::Local::Hello), -1),
        b"select" => row("select", Local(self::Local::Select), 2),
        b"ping" => row("ping", Local(self::Local::Ping), -1),
        b"echo" => row("echo", Local(self::Local::Echo), 2),
        b"quit" => row("quit", Local(self::Local::Quit), -1),
        b"reset" => row("reset", Local(self::Local::Reset), 1),
        b"client" => row("client", Local(self::Local::Client), -2),
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
        b"wait" => row("wait", Blocking, 3),
        b"waitaof" => row("waitaof", Blocking, 4),
        b"subscribe" => row("subscribe", Relay, -2),
        b"psubscribe" => row("psubscribe", Relay, -2),
        b"ssubscribe" => row("ssubscribe", Relay, -2),
        b"unsubscribe" => row("unsubscribe", Relay, -1),
        b"punsubscribe" => row("punsubscribe", Relay, -1),
        b"sunsubscribe" => row("sunsubscribe", Relay, -1),
        b"monitor" => row("monitor", Relay, 1),
        b"sync" => row("sync", Refused, 1),
        b"psync" => row("psync", Refused, -3),
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
    /// CLIENT TRACKING: with ON, relayed on a dedicated connection.
    Tracking,
    /// CLIENT REPLY: with OFF or SKIP, relayed on a dedicated connection.
    Reply,
    /// Sets a flag on the connection it runs on (NO-EVICT, NO-TOUCH): refused, since the
    /// flag would stay on a shared connection.
    Refused,
    Forward,
}

/// A CLIENT subcommand row: what to do, its full name for errors, its arity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subcommand {
    pub full_name: &'static str,
    pub kind: ClientSub,
    pub arity: i32,
}

/// Classifies `CLIENT <sub>`; `None` for a subcommand Redis does not know.
pub fn client_subcommand(sub: &[u8]) -> Option<Subcommand> {
    use ClientSub::*;
    let mut buf = [0u8; MAX_NAME];
    let lower = lowercase(sub, &mut buf)?;
    let (full_name, kind, arity) = match lower {
        b"getname" => ("client|getname", GetName, 2),
        b"setname" => ("client|setname", SetName, 3),
        b"id" => ("client|id", Id, 2),
        b"info" => ("client|info", Info, 2),
        b"setinfo" => ("client|setinfo", SetInfo, 4),
        b"caching" => ("client|caching", Forward, 3),
        b"no-evict" => ("client|no-evict", Refused, 3),
        b"no-touch" => ("client|no-touch", Refused, 3),
        b"reply" => ("client|reply", Reply, 3),
        b"tracking" => ("client|tracking", Tracking, -3),
        b"getredir" => ("client|getredir", Forward, 2),
        b"help" => ("client|help", Forward, 2),
        b"kill" => ("client|kill", Forward, -3),
        b"list" => ("client|list", Forward, -2),
        b"pause" => ("client|pause", Forward, -3),
        b"trackinginfo" => ("client|trackinginfo", Forward, 2),
        b"unblock" => ("client|unblock", Forward, -3),
        b"unpause" => ("client|unpause", Forward, 2),
        _ => return None,
    };
    Some(Subcommand {
        full_name,
        kind,
        arity,
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
        assert_eq!(
            client_subcommand(b"TRACKINGINFO").unwrap().full_name,
            "client|trackinginfo"
        );
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

//! The upstream's own command catalogue: every command and subcommand Redis knows, with its
//! arity, its flags and its ACL categories, built from Redis's replies to `COMMAND` (and
//! `ACL CAT`), never from a table written here. Command rules are resolved against it
//! (`+@dangerous` means what *this* Redis says is dangerous), and a request is looked up in
//! it as Redis's `lookupCommand` does.
//!
//! It reads replies; it does not decide anything (that is [`super::Permissions`]).

use std::collections::HashMap;

use bytes::Bytes;

use crate::protocol::reply::split_array;
use crate::protocol::{Proto, encode};
use crate::upstream::{Upstream, UpstreamError};

/// A command's place in [`Catalogue::entries`]: the bit Redis's ACL keeps for it.
pub type CommandIndex = usize;

/// Longest command or subcommand name looked up; longer names are not commands. Redis's
/// longest (7.x) is 24 bytes (`client|trackinginfo` is a subcommand of 12).
const MAX_NAME: usize = 64;

/// The upstream's reply could not be read as a `COMMAND` or `ACL CAT` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogueError {
    #[error("the COMMAND reply is not an array of command entries (entry {0})")]
    Malformed(usize),
    #[error("the ACL CAT reply is not an array of category names")]
    MalformedCategories,
    #[error("Redis reports more than 64 ACL categories")]
    TooManyCategories,
    #[error("Redis refused `{command}`: {text}")]
    Refused { command: &'static str, text: String },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// One command or subcommand, as `COMMAND` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name Redis prints in errors: `get`, `config|set`.
    pub full_name: String,
    /// Redis's arity: `n` means exactly n arguments (with the name, and for a subcommand
    /// with the container's name), `-n` at least n.
    pub arity: i32,
    /// The ACL categories, as bits of [`Catalogue::category_bit`].
    pub categories: u64,
    /// The container, for a subcommand.
    pub parent: Option<CommandIndex>,
    /// Flagged `write` by Redis.
    pub write: bool,
    /// Flagged `readonly` by Redis.
    pub readonly: bool,
    /// Flagged `no_auth` (AUTH, HELLO): Redis's ACL check lets it through whatever the rules.
    pub no_auth: bool,
    /// Flagged `module`: category rules skip it, as Redis's do.
    pub module: bool,
    /// The subcommands, by lower-case name.
    subcommands: HashMap<Vec<u8>, CommandIndex>,
}

impl Entry {
    /// Whether the command has subcommands (CONFIG, CLIENT, …).
    pub fn is_container(&self) -> bool {
        !self.subcommands.is_empty()
    }

    /// The subcommands' indexes.
    pub fn subcommands(&self) -> impl Iterator<Item = CommandIndex> + '_ {
        self.subcommands.values().copied()
    }
}

/// Every command and subcommand of one Redis, and its ACL categories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalogue {
    entries: Vec<Entry>,
    /// Top-level commands by lower-case name.
    commands: HashMap<Vec<u8>, CommandIndex>,
    /// Category names (lower case, without `@`), in the order of their bits.
    categories: Vec<String>,
}

impl Catalogue {
    /// Builds the catalogue from the RESP2 reply to `COMMAND` (or `COMMAND INFO` with no
    /// names: the same shape) and, when available, to `ACL CAT`. Redis 7 entries carry their
    /// subcommands (10 elements); Redis 6 entries (7 elements) have categories but no
    /// subcommands. `ACL CAT` adds the categories no command belongs to, so that rules
    /// naming them are accepted as Redis accepts them.
    pub fn from_replies(
        command: &Bytes,
        acl_cat: Option<&Bytes>,
    ) -> Result<Catalogue, CatalogueError> {
        let mut catalogue = Catalogue::default();
        if let Some(reply) = acl_cat {
            let names = split_array(reply).ok_or(CatalogueError::MalformedCategories)?;
            for name in &names {
                let name = text(name).ok_or(CatalogueError::MalformedCategories)?;
                catalogue.category_bits(&[name])?;
            }
        }
        let entries = split_array(command).ok_or(CatalogueError::Malformed(0))?;
        for (n, entry) in entries.iter().enumerate() {
            catalogue
                .add(entry, None)
                .ok_or(CatalogueError::Malformed(n))??;
        }
        Ok(catalogue)
    }

    /// Adds one `COMMAND` entry (and its subcommands); `None` when it is malformed.
    fn add(
        &mut self,
        entry: &Bytes,
        parent: Option<CommandIndex>,
    ) -> Option<Result<CommandIndex, CatalogueError>> {
        let fields = split_array(entry)?;
        if fields.len() < 7 {
            return None;
        }
        let full_name = String::from_utf8(text(&fields[0])?.to_ascii_lowercase()).ok()?;
        let arity = i32::try_from(integer(&fields[1])?).ok()?;
        let flags = split_array(&fields[2])?;
        let has = |flag: &[u8]| flags.iter().any(|f| text(f) == Some(flag));
        let category_frames = split_array(&fields[6])?;
        let names = category_frames
            .iter()
            .map(|c| text(c).map(|c| c.strip_prefix(b"@").unwrap_or(c)))
            .collect::<Option<Vec<_>>>()?;
        let categories = match self.category_bits(&names) {
            Ok(bits) => bits,
            Err(e) => return Some(Err(e)),
        };
        let index = self.entries.len();
        self.entries.push(Entry {
            write: has(b"write"),
            readonly: has(b"readonly"),
            no_auth: has(b"no_auth"),
            module: has(b"module"),
            full_name,
            arity,
            categories,
            parent,
            subcommands: HashMap::new(),
        });
        match parent {
            // A subcommand's key is what follows the `|` of its full name.
            Some(parent) => {
                let name = self.entries[index].full_name.rsplit('|').next()?;
                let key = name.as_bytes().to_vec();
                self.entries[parent].subcommands.insert(key, index);
            }
            None => {
                let key = self.entries[index].full_name.as_bytes().to_vec();
                self.commands.insert(key, index);
            }
        }
        // One level of subcommands, as Redis has (and as bounds the recursion).
        if parent.is_none() {
            if let Some(subs) = fields.get(9) {
                for sub in split_array(subs)? {
                    if let Err(e) = self.add(&sub, Some(index))? {
                        return Some(Err(e));
                    }
                }
            }
        }
        Some(Ok(index))
    }

    /// The bits of `names`, registering the categories not seen yet.
    fn category_bits(&mut self, names: &[&[u8]]) -> Result<u64, CatalogueError> {
        let mut bits = 0;
        for name in names {
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            let bit = match self.categories.iter().position(|c| *c == name) {
                Some(bit) => bit,
                None if self.categories.len() < 64 => {
                    self.categories.push(name);
                    self.categories.len() - 1
                }
                None => return Err(CatalogueError::TooManyCategories),
            };
            bits |= 1 << bit;
        }
        Ok(bits)
    }

    /// The bit of a category, case-insensitively (Redis compares with `strcasecmp`).
    pub fn category_bit(&self, name: &str) -> Option<u64> {
        self.categories
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .map(|bit| 1 << bit)
    }

    /// Whether a `read_only` user is refused the command: Redis flags it `write`, or it
    /// runs a script that may write — a top-level `@scripting` command that is neither a
    /// container nor flagged `readonly` (EVAL, EVALSHA, FCALL; not their `_RO` forms, not
    /// SCRIPT or FUNCTION subcommands, which Redis flags `write` where they do write).
    /// Redis hides its `may_replicate` flag from `COMMAND`, so this is the closest its
    /// data says.
    pub fn may_write(&self, index: CommandIndex) -> bool {
        let Some(entry) = self.entries.get(index) else {
            return false;
        };
        let scripting = self.category_bit("scripting").unwrap_or(0);
        entry.write
            || entry.parent.is_none()
                && !entry.is_container()
                && !entry.readonly
                && entry.categories & scripting != 0
    }

    /// The category names, without `@`.
    pub fn categories(&self) -> &[String] {
        &self.categories
    }

    /// Every command and subcommand; an index is a [`CommandIndex`].
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The top-level commands' indexes.
    pub fn commands(&self) -> impl Iterator<Item = CommandIndex> + '_ {
        self.commands.values().copied()
    }

    /// A command by name, case-insensitively: `get`, or `config|set` for a subcommand, as
    /// rules name them (Redis's `lookupCommandBySds`: one `|` at most, a subcommand only
    /// of a container).
    pub fn by_name(&self, name: &str) -> Option<CommandIndex> {
        let mut parts = name.split('|');
        let command = self.top_level(parts.next()?.as_bytes())?;
        match (parts.next(), parts.next()) {
            (None, _) => Some(command),
            (Some(sub), None) => self.subcommand(command, sub.as_bytes()),
            (Some(_), Some(_)) => None,
        }
    }

    /// The command a request runs, as Redis's `lookupCommand` finds it: the subcommand
    /// named by the second argument when the first is a container, else the command
    /// itself. `None` when Redis would answer "unknown command" or "unknown subcommand".
    pub fn lookup(&self, args: &[Bytes]) -> Option<CommandIndex> {
        let command = self.top_level(args.first()?)?;
        match args.get(1) {
            Some(sub) if self.entries[command].is_container() => self.subcommand(command, sub),
            _ => Some(command),
        }
    }

    fn top_level(&self, name: &[u8]) -> Option<CommandIndex> {
        let mut buf = [0u8; MAX_NAME];
        self.commands.get(lowercase(name, &mut buf)?).copied()
    }

    fn subcommand(&self, command: CommandIndex, name: &[u8]) -> Option<CommandIndex> {
        let mut buf = [0u8; MAX_NAME];
        let entry = self.entries.get(command)?;
        entry.subcommands.get(lowercase(name, &mut buf)?).copied()
    }
}

/// Lower-cases `name` into `buf`; `None` when it is longer than any command name.
fn lowercase<'a>(name: &[u8], buf: &'a mut [u8; MAX_NAME]) -> Option<&'a [u8]> {
    let out = buf.get_mut(..name.len())?;
    for (o, b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

/// The payload of a simple or bulk string reply.
fn text(frame: &[u8]) -> Option<&[u8]> {
    let body = frame.strip_suffix(b"\r\n")?;
    match body.first()? {
        b'+' => Some(&body[1..]),
        b'$' => {
            let line_end = memchr::memchr(b'\r', body)?;
            body.get(line_end + 2..)
        }
        _ => None,
    }
}

/// The value of an integer reply.
fn integer(frame: &[u8]) -> Option<i64> {
    let body = frame.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    crate::protocol::number::parse_i64(body)
}

/// Loads the catalogue from the upstream: `COMMAND` and `ACL CAT`, in RESP2, on one of
/// its connections. `ACL CAT` is optional (a user the upstream refuses it to still gets
/// every category some command belongs to); `COMMAND` is not: without it no rule naming a
/// command or category can be resolved.
pub async fn load(upstream: &Upstream) -> Result<Catalogue, CatalogueError> {
    let command = upstream
        .call_now(encode::command(&["COMMAND"]), Proto::Resp2)
        .await?;
    if command.first() == Some(&b'-') {
        return Err(CatalogueError::Refused {
            command: "COMMAND",
            text: crate::upstream::conn::error_text(&command),
        });
    }
    let acl_cat = upstream
        .call_now(encode::command(&["ACL", "CAT"]), Proto::Resp2)
        .await?;
    let acl_cat = (acl_cat.first() == Some(&b'*')).then_some(&acl_cat);
    Catalogue::from_replies(&command, acl_cat)
}

/// A `COMMAND` reply in Redis 7's shape for a few commands, and an `ACL CAT` reply, for
/// the unit tests here and in `policy`.
#[cfg(test)]
pub(crate) fn sample() -> Catalogue {
    fn entry(name: &str, arity: i32, flags: &[&str], cats: &[&str], subs: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!(
            "*10\r\n${}\r\n{name}\r\n:{arity}\r\n*{}\r\n",
            name.len(),
            flags.len()
        );
        for f in flags {
            out.push_str(&format!("+{f}\r\n"));
        }
        out.push_str(&format!(":0\r\n:0\r\n:0\r\n*{}\r\n", cats.len()));
        for c in cats {
            out.push_str(&format!("+@{c}\r\n"));
        }
        out.push_str(&format!("*0\r\n*0\r\n*{}\r\n", subs.len()));
        let mut out = out.into_bytes();
        for s in subs {
            out.extend_from_slice(s);
        }
        out
    }
    let entries = [
        entry(
            "get",
            2,
            &["readonly", "fast"],
            &["read", "string", "fast"],
            &[],
        ),
        entry(
            "set",
            -3,
            &["write", "denyoom"],
            &["write", "string", "slow"],
            &[],
        ),
        entry(
            "flushall",
            -1,
            &["write"],
            &["keyspace", "write", "slow", "dangerous"],
            &[],
        ),
        entry(
            "select",
            2,
            &["loading", "fast"],
            &["fast", "connection"],
            &[],
        ),
        entry(
            "auth",
            -2,
            &["no_auth", "fast"],
            &["fast", "connection"],
            &[],
        ),
        entry("eval", -3, &["noscript"], &["slow", "scripting"], &[]),
        entry(
            "eval_ro",
            -3,
            &["noscript", "readonly"],
            &["slow", "scripting"],
            &[],
        ),
        entry(
            "config",
            -2,
            &[],
            &["slow"],
            &[
                entry(
                    "config|get",
                    -3,
                    &["admin"],
                    &["admin", "slow", "dangerous"],
                    &[],
                ),
                entry(
                    "config|set",
                    -4,
                    &["admin"],
                    &["admin", "slow", "dangerous"],
                    &[],
                ),
                entry("config|help", 2, &["loading"], &["slow"], &[]),
            ],
        ),
    ];
    let mut reply = format!("*{}\r\n", entries.len()).into_bytes();
    for e in &entries {
        reply.extend_from_slice(e);
    }
    let cat = Bytes::from_static(b"*3\r\n$4\r\nread\r\n$5\r\nwrite\r\n$11\r\nhyperloglog\r\n");
    Catalogue::from_replies(&Bytes::from(reply), Some(&cat)).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_commands_subcommands_and_categories() {
        let c = sample();
        let set = c.by_name("config|set").unwrap();
        let config = c.by_name("CONFIG").unwrap();
        assert_eq!(c.entries()[set].full_name, "config|set");
        assert_eq!(c.entries()[set].parent, Some(config));
        assert_eq!(c.entries()[set].arity, -4);
        assert!(c.entries()[config].is_container());
        assert!(c.entries()[c.by_name("set").unwrap()].write);
        assert!(c.entries()[c.by_name("auth").unwrap()].no_auth);
        assert!(c.category_bit("HyperLogLog").is_some(), "from ACL CAT only");
        let dangerous = c.category_bit("dangerous").unwrap();
        assert_ne!(c.entries()[set].categories & dangerous, 0);
        assert_eq!(c.by_name("config|set|x"), None);
        assert_eq!(c.by_name("get|x"), None);
        assert_eq!(c.by_name("nosuch"), None);
    }

    #[test]
    fn looks_up_requests_as_redis_does() {
        let c = sample();
        let args = |s: &str| {
            s.split(' ')
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect::<Vec<_>>()
        };
        let name = |s: &str| {
            c.lookup(&args(s))
                .map(|i| c.entries()[i].full_name.as_str())
        };
        assert_eq!(name("GET k"), Some("get"));
        assert_eq!(name("Config SET a b"), Some("config|set"));
        assert_eq!(name("config"), Some("config"));
        assert_eq!(name("config nosuch"), None);
        assert_eq!(name("select 0"), Some("select"));
        assert_eq!(name("nosuch"), None);
        assert_eq!(c.lookup(&[]), None);
    }

    #[test]
    fn malformed_replies() {
        let bad =
            |b: &'static [u8]| Catalogue::from_replies(&Bytes::from_static(b), None).unwrap_err();
        assert_eq!(
            bad(b"-ERR unknown command\r\n"),
            CatalogueError::Malformed(0)
        );
        assert_eq!(bad(b"*1\r\n:1\r\n"), CatalogueError::Malformed(0));
        assert_eq!(
            bad(b"*1\r\n*2\r\n$3\r\nget\r\n:2\r\n"),
            CatalogueError::Malformed(0)
        );
        let cat = Bytes::from_static(b"*1\r\n:1\r\n");
        assert_eq!(
            Catalogue::from_replies(&Bytes::from_static(b"*0\r\n"), Some(&cat)).unwrap_err(),
            CatalogueError::MalformedCategories
        );
    }
}

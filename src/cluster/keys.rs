//! Which arguments of a command are keys, for routing by slot.
//!
//! The table comes from the server itself (`COMMAND`, read once from a cluster node), so
//! it matches the Redis version behind the proxy: each command's first key, last key
//! (negative: from the end) and step, and its subcommands' (`OBJECT|ENCODING`). Commands
//! flagged `movablekeys` — whose keys depend on their arguments — are read by the rules
//! below, one per argument layout Redis has; one not covered falls back to its first key.
//! The table also keeps each command's `readonly` flag: with `read_from_replicas`, only
//! such commands may go to a replica.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use redis_protocol::resp2::decode::decode as decode_resp2;
use redis_protocol::resp2::types::OwnedFrame;

/// Where a command's keys are (positions count the command name as 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// Redis's arity: `n` arguments exactly (the name included), or at least `-n`.
    pub arity: i64,
    pub first: i64,
    pub last: i64,
    pub step: i64,
    pub movable: bool,
    /// Flagged `readonly` by the server: it never changes the data set (GET, MGET,
    /// EVAL_RO; not EVAL, which may write).
    pub readonly: bool,
}

/// Commands (and `container|subcommand`s), lowercase, to their key positions.
#[derive(Debug, Default, Clone)]
pub struct KeyTable {
    specs: HashMap<Vec<u8>, KeySpec>,
    /// Commands with subcommands (`object`, `xinfo` …): only theirs look at `args[1]`.
    containers: HashSet<Vec<u8>>,
}

/// The slots of a command's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlots {
    /// No key (or a command the server does not know).
    None,
    /// Every key in this slot.
    One(u16),
    /// Keys in several slots.
    Many,
}

/// Longest command name looked up without an allocation (Redis's longest is 24 bytes,
/// with its subcommand 40).
const NAME_BUF: usize = 64;

/// `parts` lower-cased and joined by `|` into `buf`; `None` when it does not fit.
fn lowercase_into<'a>(buf: &'a mut [u8; NAME_BUF], parts: &[&[u8]]) -> Option<&'a [u8]> {
    let mut len = 0;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            *buf.get_mut(len)? = b'|';
            len += 1;
        }
        let out = buf.get_mut(len..len + part.len())?;
        for (o, b) in out.iter_mut().zip(part.iter()) {
            *o = b.to_ascii_lowercase();
        }
        len += part.len();
    }
    Some(&buf[..len])
}

impl KeyTable {
    /// Reads a `COMMAND` reply (RESP2). `None` when it is not one.
    pub fn from_command_reply(reply: &[u8]) -> Option<KeyTable> {
        let Ok(Some((OwnedFrame::Array(commands), _))) = decode_resp2(reply) else {
            return None;
        };
        let mut table = KeyTable::default();
        for command in &commands {
            table.add(command, None);
        }
        (!table.specs.is_empty()).then_some(table)
    }

    fn add(&mut self, command: &OwnedFrame, container: Option<&[u8]>) {
        let OwnedFrame::Array(fields) = command else {
            return;
        };
        let (Some(name), Some(arity), Some(flags), Some(first), Some(last), Some(step)) = (
            fields.first().and_then(text),
            fields.get(1).and_then(integer),
            fields.get(2),
            fields.get(3).and_then(integer),
            fields.get(4).and_then(integer),
            fields.get(5).and_then(integer),
        ) else {
            return;
        };
        let flagged = |flag: &[u8]| match flags {
            OwnedFrame::Array(flags) => flags
                .iter()
                .filter_map(text)
                .any(|f| f.eq_ignore_ascii_case(flag)),
            _ => false,
        };
        let (movable, readonly) = (flagged(b"movablekeys"), flagged(b"readonly"));
        let name = name.to_ascii_lowercase();
        let spec = KeySpec {
            arity,
            first,
            last,
            step,
            movable,
            readonly,
        };
        // Redis 7 names subcommands `container|sub` already.
        let key = match container {
            Some(c) if !name.contains(&b'|') => [c, b"|", &name].concat(),
            _ => name.clone(),
        };
        self.specs.insert(key, spec);
        if let Some(OwnedFrame::Array(subcommands)) = fields.get(9) {
            if !subcommands.is_empty() {
                self.containers.insert(name.clone());
            }
            for sub in subcommands {
                self.add(sub, Some(&name));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The spec of `args[0]` (or of `args[0]|args[1]` for a container command).
    pub fn spec(&self, args: &[&[u8]]) -> Option<KeySpec> {
        self.spec_of(args.first()?, args.get(1).copied())
    }

    /// The spec of `name` (or of `name|sub` when `name` has subcommands), looked up
    /// without an allocation.
    fn spec_of(&self, name: &[u8], sub: Option<&[u8]>) -> Option<KeySpec> {
        let mut buf = [0u8; NAME_BUF];
        let lower = match lowercase_into(&mut buf, &[name]) {
            Some(lower) => lower,
            None => return self.specs.get(&name.to_ascii_lowercase()).copied(),
        };
        if let (Some(sub), true) = (sub, self.containers.contains(lower)) {
            let mut full = [0u8; NAME_BUF];
            let found = match lowercase_into(&mut full, &[name, sub]) {
                Some(full) => self.specs.get(full).copied(),
                None => {
                    let full = [lower, b"|", &sub.to_ascii_lowercase()].concat();
                    self.specs.get(&full).copied()
                }
            };
            if found.is_some() {
                return found;
            }
        }
        self.specs.get(lower).copied()
    }

    /// The slots of the command's keys; for commands with fixed key positions (all but
    /// the `movablekeys` ones) without an allocation.
    pub fn key_slots(&self, args: &[Bytes]) -> KeySlots {
        let Some(spec) = args
            .first()
            .and_then(|name| self.spec_of(name, args.get(1).map(|s| &s[..])))
        else {
            return KeySlots::None;
        };
        let mut found = KeySlots::None;
        let mut add = |key: &[u8]| {
            let s = super::slot::slot(key);
            found = match found {
                KeySlots::None => KeySlots::One(s),
                KeySlots::One(at) if at == s => KeySlots::One(at),
                _ => KeySlots::Many,
            };
        };
        if spec.movable {
            let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
            for position in self.key_positions(&refs) {
                add(&args[position]);
            }
            return found;
        }
        for position in FixedKeys::new(spec, args.len()) {
            add(&args[position]);
        }
        found
    }

    /// Whether the server knows the command (or its subcommand) and `args` has an
    /// argument count it accepts.
    pub fn is_valid(&self, args: &[&[u8]]) -> bool {
        let Some(name) = args.first() else {
            return false;
        };
        if self.containers.contains(&name.to_ascii_lowercase()) {
            // A container's own spec does not vouch for an unknown subcommand.
            let Some(sub) = args.get(1) else {
                return false;
            };
            let full = [&name[..], b"|", &sub[..]].concat().to_ascii_lowercase();
            if !self.specs.contains_key(&full) {
                return false;
            }
        }
        self.spec(args).is_some_and(|spec| {
            let argc = i64::try_from(args.len()).unwrap_or(i64::MAX);
            if spec.arity >= 0 {
                argc == spec.arity
            } else {
                argc >= -spec.arity
            }
        })
    }

    /// The command's name as Redis prints it in errors: lower case, `container|sub` for a
    /// subcommand the server knows.
    pub fn full_name(&self, args: &[Bytes]) -> Bytes {
        let name = args
            .first()
            .map(|n| n.to_ascii_lowercase())
            .unwrap_or_default();
        if let (Some(sub), true) = (args.get(1), self.containers.contains(&name)) {
            let full = [&name[..], b"|", &sub.to_ascii_lowercase()].concat();
            if self.specs.contains_key(&full) {
                return Bytes::from(full);
            }
        }
        Bytes::from(name)
    }

    /// Whether the server flags the command (or its subcommand) `readonly`; `false` for
    /// a command it does not know.
    pub fn is_readonly(&self, args: &[&[u8]]) -> bool {
        self.spec(args).is_some_and(|spec| spec.readonly)
    }

    /// The positions in `args` that hold keys (empty for a keyless or unknown command).
    pub fn key_positions(&self, args: &[&[u8]]) -> Vec<usize> {
        let Some(spec) = self.spec(args) else {
            return Vec::new();
        };
        if spec.movable {
            if let Some(positions) = movable_keys(args) {
                return positions;
            }
        }
        fixed_keys(spec, args.len())
    }
}

fn text(frame: &OwnedFrame) -> Option<Vec<u8>> {
    match frame {
        OwnedFrame::BulkString(b) => Some(b.clone()),
        OwnedFrame::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn integer(frame: &OwnedFrame) -> Option<i64> {
    match frame {
        OwnedFrame::Integer(i) => Some(*i),
        _ => None,
    }
}

/// Positions from first/last/step (`last` < 0 counts from the end: -1 is the last).
fn fixed_keys(spec: KeySpec, argc: usize) -> Vec<usize> {
    FixedKeys::new(spec, argc).collect()
}

/// The positions of [`fixed_keys`], one by one.
struct FixedKeys {
    next: i64,
    last: i64,
    step: i64,
}

impl FixedKeys {
    fn new(spec: KeySpec, argc: usize) -> FixedKeys {
        let argc = i64::try_from(argc).unwrap_or(i64::MAX);
        if spec.first <= 0 || spec.step <= 0 {
            return FixedKeys {
                next: 1,
                last: 0,
                step: 1,
            };
        }
        let last = if spec.last < 0 {
            argc + spec.last
        } else {
            spec.last.min(argc - 1)
        };
        FixedKeys {
            next: spec.first,
            last: last.min(argc - 1),
            step: spec.step,
        }
    }
}

impl Iterator for FixedKeys {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.next > self.last {
            return None;
        }
        let at = self.next;
        self.next = self.next.saturating_add(self.step);
        usize::try_from(at).ok()
    }
}

fn count_at(args: &[&[u8]], index: usize) -> Option<usize> {
    std::str::from_utf8(args.get(index)?).ok()?.parse().ok()
}

/// `numkeys` at `at`, the keys right after it.
fn numkeys(args: &[&[u8]], at: usize) -> Option<Vec<usize>> {
    let n = count_at(args, at)?;
    let end = at.checked_add(1)?.checked_add(n)?;
    (end <= args.len()).then(|| (at + 1..end).collect())
}

fn position_of(args: &[&[u8]], word: &[u8], from: usize) -> Option<usize> {
    (from..args.len()).find(|&i| args[i].eq_ignore_ascii_case(word))
}

/// The keys of a `movablekeys` command, by its argument layout; `None` when the command
/// is not one of these (or its arguments do not parse: Redis will refuse it anyway).
/// Every position is inside `args`, whatever the client sent.
fn movable_keys(args: &[&[u8]]) -> Option<Vec<usize>> {
    let mut keys = movable_layout(args)?;
    keys.retain(|&i| i < args.len());
    Some(keys)
}

fn movable_layout(args: &[&[u8]]) -> Option<Vec<usize>> {
    let name = args.first()?.to_ascii_lowercase();
    match &name[..] {
        b"eval" | b"evalsha" | b"eval_ro" | b"evalsha_ro" | b"fcall" | b"fcall_ro" => {
            numkeys(args, 2)
        }
        b"zunion" | b"zinter" | b"zdiff" | b"sintercard" | b"zintercard" | b"lmpop" | b"zmpop" => {
            numkeys(args, 1)
        }
        b"blmpop" | b"bzmpop" => numkeys(args, 2),
        b"zunionstore" | b"zinterstore" | b"zdiffstore" => {
            let mut keys = vec![1];
            keys.extend(numkeys(args, 2)?);
            Some(keys)
        }
        b"xread" | b"xreadgroup" => {
            let streams = position_of(args, b"streams", 1)?;
            let rest = args.len() - streams - 1;
            (rest > 0 && rest % 2 == 0).then(|| (streams + 1..streams + 1 + rest / 2).collect())
        }
        b"sort" | b"sort_ro" => {
            let mut keys = vec![1];
            if let Some(store) = position_of(args, b"store", 2) {
                keys.push(store + 1);
            }
            Some(keys.into_iter().filter(|&i| i < args.len()).collect())
        }
        b"georadius" | b"georadiusbymember" => {
            let mut keys = vec![1];
            for word in [&b"store"[..], b"storedist"] {
                if let Some(at) = position_of(args, word, 2) {
                    keys.push(at + 1);
                }
            }
            Some(keys.into_iter().filter(|&i| i < args.len()).collect())
        }
        b"migrate" => match position_of(args, b"keys", 6) {
            Some(at) => Some((at + 1..args.len()).collect()),
            None => Some(vec![3]),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A COMMAND reply in Redis 7's shape for a few commands.
    fn table() -> KeyTable {
        fn command(name: &str, flags: &[&str], first: i64, last: i64, step: i64) -> String {
            let flags: String = flags
                .iter()
                .map(|f| format!("+{f}\r\n"))
                .collect::<String>();
            format!(
                "*10\r\n${}\r\n{name}\r\n:-2\r\n*{}\r\n{flags}:{first}\r\n:{last}\r\n:{step}\r\n\
                 *0\r\n*0\r\n*0\r\n*0\r\n",
                name.len(),
                flags.lines().count()
            )
        }
        let commands = [
            command("get", &["readonly"], 1, 1, 1),
            command("mset", &["write"], 1, -1, 2),
            command("mget", &["readonly"], 1, -1, 1),
            command("ping", &["fast"], 0, 0, 0),
            command("eval", &["movablekeys"], 0, 0, 0),
            command("eval_ro", &["readonly", "movablekeys"], 0, 0, 0),
            command("xread", &["movablekeys"], 0, 0, 0),
            command("zunionstore", &["movablekeys"], 1, 1, 1),
            command("strange", &["movablekeys"], 1, 1, 1),
            command("migrate", &["write", "movablekeys"], 3, 3, 1),
        ];
        // OBJECT with its ENCODING subcommand.
        let object = "*10\r\n$6\r\nobject\r\n:-2\r\n*0\r\n:0\r\n:0\r\n:0\r\n*0\r\n*0\r\n*0\r\n\
             *1\r\n*10\r\n$15\r\nobject|encoding\r\n:3\r\n*1\r\n+readonly\r\n:2\r\n:2\r\n:1\r\n\
             *0\r\n*0\r\n*0\r\n*0\r\n";
        let reply = format!("*{}\r\n{}{object}", commands.len() + 1, commands.concat());
        KeyTable::from_command_reply(reply.as_bytes()).unwrap_or_default()
    }

    fn keys(table: &KeyTable, line: &str) -> Vec<usize> {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        table.key_positions(&args)
    }

    #[test]
    fn fixed_positions() {
        let t = table();
        assert_eq!(t.len(), 12);
        assert_eq!(keys(&t, "GET k"), [1]);
        assert_eq!(keys(&t, "MSET a 1 b 2 c 3"), [1, 3, 5]);
        assert_eq!(keys(&t, "mget a b c"), [1, 2, 3]);
        assert_eq!(keys(&t, "PING"), Vec::<usize>::new());
        assert_eq!(keys(&t, "OBJECT ENCODING k"), [2]);
        assert_eq!(keys(&t, "unknown k"), Vec::<usize>::new());
    }

    #[test]
    fn movable_positions() {
        let t = table();
        assert_eq!(keys(&t, "EVAL s 2 a b x y"), [3, 4]);
        assert_eq!(keys(&t, "EVAL s 0"), Vec::<usize>::new());
        // More keys declared than given: no keys (Redis refuses the command).
        assert_eq!(keys(&t, "EVAL s 5 a"), Vec::<usize>::new());
        assert_eq!(keys(&t, "XREAD COUNT 2 STREAMS a b 0 0"), [4, 5]);
        assert_eq!(keys(&t, "ZUNIONSTORE d 2 a b WEIGHTS 1 2"), [1, 3, 4]);
        // A movable command without a rule: its declared first key.
        assert_eq!(keys(&t, "STRANGE k"), [1]);
        // Short or absurd arguments: positions stay inside the request.
        assert_eq!(keys(&t, "MIGRATE a b"), Vec::<usize>::new());
        assert_eq!(
            keys(&t, "EVAL s 18446744073709551615 a"),
            Vec::<usize>::new()
        );
        assert_eq!(keys(&t, "XREAD STREAMS"), Vec::<usize>::new());
    }

    #[test]
    fn key_slots_agree_with_positions() {
        let t = table();
        let lines = [
            "GET k",
            "get {t}a",
            "MSET a 1 b 2",
            "MSET {t}a 1 {t}b 2",
            "mget {t}a {t}b {t}c",
            "mget a b",
            "PING",
            "OBJECT ENCODING k",
            "object encoding k",
            "unknown k",
            "EVAL s 2 a b",
            "EVAL s 2 {t}a {t}b",
            "EVAL s 0",
            "XREAD COUNT 2 STREAMS a b 0 0",
            "ZUNIONSTORE d 2 a b",
            "STRANGE k",
            "MSET a",
            "GET",
            "MIGRATE a b",
        ];
        for line in lines {
            let args: Vec<Bytes> = line
                .split(' ')
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect();
            let mut slots: Vec<u16> = keys(&t, line)
                .into_iter()
                .map(|i| super::super::slot::slot(&args[i]))
                .collect();
            slots.dedup();
            let want = match slots.as_slice() {
                [] => KeySlots::None,
                [one] => KeySlots::One(*one),
                _ if slots.iter().all(|s| *s == slots[0]) => KeySlots::One(slots[0]),
                _ => KeySlots::Many,
            };
            assert_eq!(t.key_slots(&args), want, "{line}");
        }
        // Names too long for the stack buffer are still found (and unknown here).
        let long = vec![Bytes::from(vec![b'x'; 200]), Bytes::from_static(b"k")];
        assert_eq!(t.key_slots(&long), KeySlots::None);
    }

    #[test]
    fn valid_commands() {
        let t = table();
        let valid = |line: &str| {
            let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
            t.is_valid(&args)
        };
        assert!(valid("GET k"));
        assert!(valid("ping x"));
        assert!(valid("OBJECT ENCODING k"));
        // Arity (the table says at least two arguments), unknown commands and
        // subcommands.
        assert!(!valid("GET"));
        assert!(!valid("unknown k"));
        assert!(!valid("OBJECT FOO k"));
        assert!(!valid("OBJECT"));
    }

    #[test]
    fn readonly_flags() {
        let t = table();
        let readonly = |line: &str| {
            let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
            t.is_readonly(&args)
        };
        assert!(readonly("GET k"));
        assert!(readonly("get k"));
        assert!(readonly("MGET a b"));
        assert!(readonly("EVAL_RO s 1 k"));
        // A subcommand's own flags: OBJECT is not flagged, OBJECT ENCODING is.
        assert!(readonly("OBJECT ENCODING k"));
        assert!(!readonly("OBJECT FREQ k"));
        assert!(!readonly("MSET a 1"));
        assert!(!readonly("EVAL s 1 k"));
        assert!(!readonly("PING"));
        // Unknown to the server: not known to be safe.
        assert!(!readonly("unknown k"));
        assert!(!readonly(""));
    }

    #[test]
    fn not_a_command_reply() {
        assert!(KeyTable::from_command_reply(b"-ERR nope\r\n").is_none());
        assert!(KeyTable::from_command_reply(b"*0\r\n").is_none());
    }
}

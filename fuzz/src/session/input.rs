//! Turns fuzz bytes into what the client sends: a byte stream of requests (valid commands,
//! the proxy's local commands, raw and corrupted bytes) and the points where it is cut into
//! separate writes.
//!
//! Layout: the first byte holds the run's settings ([`Plan`]); every following byte starts
//! one operation, `op & 0x1f` its kind (see [`op`]), `op & 0x80` sends its command inline
//! instead of as a multibulk, `op & 0x40` lower-cases the command name. Operations read
//! their arguments from the next bytes (a missing byte reads as 0). What the bytes mean is
//! decided later, by the model, with the project's request scanner: the generator only aims
//! at interesting streams.

/// What one fuzz input asks for.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The client must authenticate (users `default`/`pw` and `app`/`apppw`); else `nopass`.
    pub auth_required: bool,
    /// Half-close as soon as everything is written, instead of after the expected replies.
    pub early_close: bool,
    /// Also send the bytes after a request that closes the connection (QUIT, an HTTP
    /// probe, a protocol error); the close may then be a reset.
    pub trailing: bool,
    /// The proxy plans at most 3 requests into one batch (`[limits] max_in_flight`).
    pub small_batches: bool,
    /// The byte stream.
    pub bytes: Vec<u8>,
    /// Write boundaries (ascending offsets into `bytes`); `true` when the client waits for
    /// the replies owed so far before writing on.
    pub cuts: Vec<(usize, bool)>,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// A dictionary word (byte < 0x80) or up to 15 raw bytes from the input.
    fn string(&mut self, dictionary: &[&[u8]]) -> Vec<u8> {
        let b = self.byte();
        if b < 0x80 {
            dictionary[usize::from(b) % dictionary.len()].to_vec()
        } else {
            let n = usize::from(b & 0x0f);
            (0..n).map(|_| self.byte()).collect()
        }
    }

    fn pick<'t>(&mut self, table: &'t [&'t [&'t [u8]]]) -> &'t [&'t [u8]] {
        table[usize::from(self.byte()) % table.len()]
    }
}

const STRINGS: &[&[u8]] = &[
    b"",
    b"a",
    b"hello",
    b"x y",
    b"\r\n",
    b"k",
    b"key:1",
    b"pw",
    b"apppw",
    b"default",
    b"app",
    b"3",
    b"2",
    b"0",
    b"-1",
    b"\x00",
    b"name",
    "é".as_bytes(),
    b"\"q\"",
    b"line\nbreak",
];
const NUMBERS: &[&[u8]] = &[
    b"0",
    b"1",
    b"15",
    b"16",
    b"-1",
    b"abc",
    b"2147483648",
    b"00",
    b"+1",
    b"3",
    b" 1",
    b"4294967296",
    b"-0",
    b"9",
    b"",
    b"15 ",
];
const VERSIONS: &[&[u8]] = &[b"2", b"3", b"1", b"4", b"x", b"-1", b"03", b""];
const USERS: &[&[u8]] = &[b"default", b"app", b"nobody", b"", b"DEFAULT"];
const PASSWORDS: &[&[u8]] = &[b"pw", b"apppw", b"wrong", b"", b"PW"];
const NAMES: &[&[u8]] = &[
    b"x",
    b"app-1",
    b"",
    b"a b",
    b"n\x00m",
    b"~!",
    "café".as_bytes(),
    b"a\r\nb",
    b"conn",
];

const DATA: &[&[&[u8]]] = &[
    &[b"GET", b"k"],
    &[b"SET", b"k", b"v"],
    &[b"INCR", b"n"],
    &[b"DEL", b"k", b"k2"],
    &[b"MGET", b"a", b"b", b"c"],
    &[b"EXISTS", b"k"],
    &[b"HSET", b"h", b"f", b"v"],
    &[b"LPUSH", b"l", b"a"],
    &[b"TTL", b"k"],
    &[b"CONFIG", b"GET", b"databases"],
    &[b"XADD", b"s", b"*", b"f", b"v"],
    &[b"DBSIZE"],
    &[b"get"],
    &[b"CLIENT", b"LIST"],
    &[b"CLIENT", b"KILL", b"ID", b"99999"],
    &[b"SET", b"k", b""],
];
const BLOCKING: &[&[&[u8]]] = &[
    &[b"BLPOP", b"l", b"0"],
    &[b"BRPOP", b"l", b"1"],
    &[b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s", b"0"],
    &[b"XREAD", b"COUNT", b"1", b"STREAMS", b"s", b"0"],
    &[b"WAIT", b"0", b"0"],
    &[b"BZPOPMIN", b"z", b"0"],
    &[b"BLMOVE", b"a", b"b", b"LEFT", b"RIGHT", b"0"],
];
const RELAY: &[&[&[u8]]] = &[
    &[b"SUBSCRIBE", b"ch"],
    &[b"SUBSCRIBE", b"a", b"b"],
    &[b"PSUBSCRIBE", b"p*"],
    &[b"UNSUBSCRIBE"],
    &[b"UNSUBSCRIBE", b"ch"],
    &[b"PUNSUBSCRIBE"],
    &[b"SSUBSCRIBE", b"s"],
    &[b"SUNSUBSCRIBE"],
    &[b"MONITOR"],
];
const CLIENT_SUBS: &[&[&[u8]]] = &[
    &[b"CLIENT", b"NO-EVICT", b"on"],
    &[b"CLIENT", b"NO-TOUCH", b"on"],
    &[b"CLIENT", b"TRACKING", b"on"],
    &[b"CLIENT", b"TRACKING", b"off"],
    &[b"CLIENT", b"TRACKING", b"on", b"REDIRECT", b"5"],
    &[b"CLIENT", b"REPLY", b"on"],
    &[b"CLIENT", b"REPLY", b"off"],
    &[b"CLIENT", b"REPLY", b"skip"],
    &[b"CLIENT", b"CACHING", b"yes"],
    &[b"CLIENT", b"BOGUS"],
    &[b"CLIENT", b"GETREDIR"],
    &[b"CLIENT", b"SETNAME"],
    &[b"CLIENT", b"GETNAME", b"x"],
    &[b"CLIENT", b"SETINFO", b"LIB-NAME", b"x"],
    &[b"CLIENT", b"SETINFO", b"lib-ver", b"1.0"],
    &[b"CLIENT", b"SETINFO", b"FOO", b"x"],
    &[b"CLIENT", b"SETINFO", b"LIB-NAME", b"a b"],
    &[b"CLIENT", b"HELP"],
];
/// Refused, arity-breaking, probing and otherwise odd requests (raw ones start with `!`).
const MISC: &[&[&[u8]]] = &[
    &[b"SYNC"],
    &[b"PSYNC", b"?", b"-1"],
    &[b"!POST / HTTP/1.1\r\n"],
    &[b"!Host: x\r\n"],
    &[b"!*0\r\n"],
    &[b"!\r\n"],
    &[b"!*-1\r\n"],
    &[b"UNKNOWNCMD", b"a"],
    &[b""],
    &[b"!GET / HTTP/1.1\r\n"],
    &[b"PING", b"a", b"b"],
    &[b"ECHO"],
    &[b"SELECT"],
    &[b"EXEC", b"x"],
    &[b"QUIT", b"now"],
    &[b"MULTI", b"x"],
    &[b"WATCH"],
    &[b"AUTH"],
    &[b"AUTH", b"a", b"b", b"c"],
    &[b"HELLO", b"3", b"SETNAME"],
    &[b"HELLO", b"3", b"BOGUS"],
    &[b"RESET", b"x"],
    &[b"CLIENT"],
    &[b"!*2\r\n$4\r\nECHO\r\n$-1\r\n"],
    &[b"!*1\r$4\rPING\r\n"],
    &[b"!PING \"unbalanced\r\n"],
    &[b"!*3000000000\r\n"],
    &[b"!*11\r\n$1\r\na\r\n"],
    &[b"!*1\r\n$16385\r\n"],
    &[b"!\x16\x03\x01\x00\xc4\x01\x00\x00\xc0\x03\x03"],
];

/// Operation kinds (`op & 0x1f`).
mod op {
    pub const PING: u8 = 0;
    pub const PING_MSG: u8 = 1;
    pub const ECHO: u8 = 2;
    pub const SELECT: u8 = 3;
    pub const AUTH1: u8 = 4;
    pub const AUTH2: u8 = 5;
    pub const HELLO: u8 = 6;
    pub const HELLO_V: u8 = 7;
    pub const HELLO_AUTH: u8 = 8;
    pub const HELLO_SETNAME: u8 = 9;
    pub const SETNAME: u8 = 10;
    pub const GETNAME: u8 = 11;
    pub const CLIENT_ID_INFO: u8 = 12;
    pub const CLIENT_SUB: u8 = 13;
    pub const MULTI: u8 = 14;
    pub const EXEC: u8 = 15;
    pub const DISCARD: u8 = 16;
    pub const WATCH: u8 = 17;
    pub const UNWATCH: u8 = 18;
    pub const RESET: u8 = 19;
    pub const QUIT: u8 = 20;
    pub const DATA: u8 = 21;
    pub const DATA2: u8 = 22;
    pub const BLOCKING: u8 = 23;
    pub const RELAY: u8 = 24;
    pub const MISC: u8 = 25;
    pub const RAW: u8 = 26;
    pub const CUT: u8 = 27;
    pub const CUT_WAIT: u8 = 28;
    pub const CORRUPT: u8 = 29;
    pub const REPEAT: u8 = 30;
    pub const BIG: u8 = 31;
}

/// Decodes one fuzz input.
pub fn decode(data: &[u8]) -> Plan {
    let mut r = Reader { data, pos: 0 };
    let settings = r.byte();
    let mut plan = Plan {
        auth_required: settings & 1 != 0,
        early_close: settings & 2 != 0,
        trailing: settings & 4 != 0,
        small_batches: settings & 8 != 0,
        ..Plan::default()
    };
    let mut last: Vec<u8> = Vec::new();
    while !r.done() {
        let code = r.byte();
        let inline = code & 0x80 != 0;
        let lower = code & 0x40 != 0;
        let args: Vec<Vec<u8>> = match code & 0x1f {
            op::PING => vec![b"PING".to_vec()],
            op::PING_MSG => vec![b"PING".to_vec(), r.string(STRINGS)],
            op::ECHO => vec![b"ECHO".to_vec(), r.string(STRINGS)],
            op::SELECT => vec![b"SELECT".to_vec(), r.string(NUMBERS)],
            op::AUTH1 => vec![b"AUTH".to_vec(), r.string(PASSWORDS)],
            op::AUTH2 => vec![b"AUTH".to_vec(), r.string(USERS), r.string(PASSWORDS)],
            op::HELLO => vec![b"HELLO".to_vec()],
            op::HELLO_V => vec![b"HELLO".to_vec(), r.string(VERSIONS)],
            op::HELLO_AUTH => vec![
                b"HELLO".to_vec(),
                r.string(VERSIONS),
                b"AUTH".to_vec(),
                r.string(USERS),
                r.string(PASSWORDS),
            ],
            op::HELLO_SETNAME => vec![
                b"HELLO".to_vec(),
                r.string(VERSIONS),
                b"SETNAME".to_vec(),
                r.string(NAMES),
            ],
            op::SETNAME => vec![b"CLIENT".to_vec(), b"SETNAME".to_vec(), r.string(NAMES)],
            op::GETNAME => vec![b"CLIENT".to_vec(), b"GETNAME".to_vec()],
            op::CLIENT_ID_INFO => {
                let sub: &[u8] = if r.byte() & 1 == 0 { b"ID" } else { b"INFO" };
                vec![b"CLIENT".to_vec(), sub.to_vec()]
            }
            op::CLIENT_SUB => to_vec(r.pick(CLIENT_SUBS)),
            op::MULTI => vec![b"MULTI".to_vec()],
            op::EXEC => vec![b"EXEC".to_vec()],
            op::DISCARD => vec![b"DISCARD".to_vec()],
            op::WATCH => vec![b"WATCH".to_vec(), r.string(STRINGS)],
            op::UNWATCH => vec![b"UNWATCH".to_vec()],
            op::RESET => vec![b"RESET".to_vec()],
            op::QUIT => vec![b"QUIT".to_vec()],
            op::DATA | op::DATA2 => to_vec(r.pick(DATA)),
            op::BLOCKING => to_vec(r.pick(BLOCKING)),
            op::RELAY => to_vec(r.pick(RELAY)),
            op::MISC => to_vec(r.pick(MISC)),
            op::RAW => {
                let n = usize::from(r.byte() & 0x3f);
                let raw: Vec<u8> = (0..n).map(|_| r.byte()).collect();
                plan.bytes.extend_from_slice(&raw);
                last = raw;
                continue;
            }
            op::CUT | op::CUT_WAIT => {
                let at = plan.bytes.len();
                let wait = code & 0x1f == op::CUT_WAIT;
                match plan.cuts.last_mut() {
                    Some(last) if last.0 == at => last.1 |= wait,
                    _ => plan.cuts.push((at, wait)),
                }
                continue;
            }
            op::CORRUPT => {
                let mut frame = multibulk(&to_vec(r.pick(DATA)));
                let at = usize::from(r.byte()) % frame.len();
                frame[at] = r.byte();
                plan.bytes.extend_from_slice(&frame);
                last = frame;
                continue;
            }
            op::REPEAT => {
                for _ in 0..(r.byte() % 8) {
                    plan.bytes.extend_from_slice(&last);
                }
                continue;
            }
            _ => {
                debug_assert_eq!(code & 0x1f, op::BIG);
                let n = usize::from(r.byte()) * 80;
                vec![b"SET".to_vec(), b"big".to_vec(), vec![b'x'; n]]
            }
        };
        let mut args = args;
        if lower {
            args[0].make_ascii_lowercase();
        }
        let frame = match args.first() {
            Some(first) if first.first() == Some(&b'!') => first[1..].to_vec(),
            _ if inline => inline_command(&args),
            _ => multibulk(&args),
        };
        plan.bytes.extend_from_slice(&frame);
        last = frame;
    }
    plan
}

fn to_vec(args: &[&[u8]]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.to_vec()).collect()
}

/// The canonical multibulk encoding.
pub fn multibulk(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// An inline command, arguments quoted (with `\xHH` escapes) where they need it.
fn inline_command(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        let plain = !a.is_empty()
            && a.iter()
                .all(|&b| b.is_ascii_graphic() && !b"\"'\\".contains(&b));
        if plain {
            out.extend_from_slice(a);
            continue;
        }
        out.push(b'"');
        for &b in a {
            match b {
                b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                b' ' => out.push(b' '),
                _ if b.is_ascii_graphic() => out.push(b),
                _ => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            }
        }
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
    out
}

//! The RESP wire format as the tests write and expect it: encoding a request, delimiting
//! one reply frame (RESP2 and RESP3), the HELLO reply Redis sends, and the exact error
//! lines the proxy must repeat.
//!
//! Pure functions over bytes; reading from a socket is `conn.rs`'s job.

use super::escape::{escape, escape_short};

/// Encodes one request as a RESP multibulk.
pub fn resp<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A RESP bulk string reply.
pub fn bulk(v: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", v.len()).into_bytes();
    out.extend_from_slice(v);
    out.extend_from_slice(b"\r\n");
    out
}

/// Length of the first complete RESP2/RESP3 frame in `buf`, `None` if incomplete.
/// Iterative: counts the frames still owed instead of recursing. Panics on a byte
/// that cannot start a frame (the stream is garbage, which is a test failure).
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let mut pos = 0usize;
    let mut pending: u64 = 1;
    while pending > 0 {
        if pos >= buf.len() {
            return None;
        }
        let rel = buf[pos..].windows(2).position(|w| w == b"\r\n")?;
        let line_end = pos + rel;
        let kind = buf[pos];
        let line = &buf[pos + 1..line_end];
        let header_start = pos;
        pos = line_end + 2;
        pending -= 1;
        let num = || -> i64 {
            std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "bad RESP length line at offset {header_start}: \"{}\"",
                        escape_short(&buf[header_start..], 200)
                    )
                })
        };
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
            b'$' | b'!' | b'=' => {
                let n = num();
                if n >= 0 {
                    let end = pos + n as usize + 2;
                    if buf.len() < end {
                        return None;
                    }
                    pos = end;
                }
            }
            b'*' | b'~' | b'>' => {
                let n = num();
                if n > 0 {
                    pending += n as u64;
                }
            }
            b'%' => {
                let n = num();
                if n > 0 {
                    pending += 2 * n as u64;
                }
            }
            b'|' => {
                // Attributes precede the frame they describe.
                let n = num();
                pending += 2 * n.max(0) as u64 + 1;
            }
            _ => panic!(
                "not a RESP frame at offset {header_start}: \"{}\"",
                escape_short(&buf[header_start..], 200)
            ),
        }
    }
    Some(pos)
}

/// The HELLO reply Redis sends (RESP2 flat `*14`, RESP3 `%7`).
pub fn hello_reply(proto: u8, version: &str, id: i64) -> Vec<u8> {
    let mut out = if proto == 3 {
        b"%7\r\n".to_vec()
    } else {
        b"*14\r\n".to_vec()
    };
    for (k, v) in [
        ("server", bulk(b"redis")),
        ("version", bulk(version.as_bytes())),
        ("proto", format!(":{proto}\r\n").into_bytes()),
        ("id", format!(":{id}\r\n").into_bytes()),
        ("mode", bulk(b"standalone")),
        ("role", bulk(b"master")),
        ("modules", b"*0\r\n".to_vec()),
    ] {
        out.extend_from_slice(&bulk(k.as_bytes()));
        out.extend_from_slice(&v);
    }
    out
}

/// The `id` field of a HELLO reply.
pub fn hello_id(reply: &[u8]) -> i64 {
    let pat = b"$2\r\nid\r\n:";
    let at = reply
        .windows(pat.len())
        .position(|w| w == pat)
        .unwrap_or_else(|| panic!("no id in HELLO reply \"{}\"", escape(reply)))
        + pat.len();
    let end = at
        + reply[at..]
            .iter()
            .position(|&b| b == b'\r')
            .expect("id line end");
    std::str::from_utf8(&reply[at..end])
        .unwrap()
        .parse()
        .unwrap()
}

/// Parses an integer reply `:n\r\n`.
#[track_caller]
pub fn int_reply(reply: &[u8]) -> i64 {
    assert!(
        reply.first() == Some(&b':') && reply.ends_with(b"\r\n"),
        "expected an integer reply, got \"{}\"",
        escape(reply)
    );
    std::str::from_utf8(&reply[1..reply.len() - 2])
        .unwrap()
        .parse()
        .unwrap()
}

pub const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
pub const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
pub const HELLO_NOAUTH_72: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
pub const NOPASS_AUTH_ERR: &[u8] = b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n";

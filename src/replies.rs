//! Every client-visible reply the proxy writes itself, in one place, with Redis's exact
//! wording (7.2 where versions differ) and the proxy's own errors. Nothing here may ever
//! include a secret.

use bytes::{BufMut, BytesMut};

use crate::protocol::encode;

pub const OK: &[u8] = b"+OK\r\n";
pub const PONG: &[u8] = b"+PONG\r\n";
pub const RESET: &[u8] = b"+RESET\r\n";
pub const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
pub const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
pub const SYNTAX_ERROR: &[u8] = b"-ERR syntax error\r\n";
pub const AUTH_WITHOUT_PASSWORD: &[u8] = b"-ERR AUTH <password> called without any password \
configured for the default user. Are you sure your configuration is correct?\r\n";
pub const HELLO_NOAUTH: &[u8] = b"-NOAUTH HELLO must be called with the client already \
authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to \
authenticate the client and select the RESP protocol version at the same time\r\n";
pub const NOPROTO: &[u8] = b"-NOPROTO unsupported protocol version\r\n";
pub const HELLO_BAD_VERSION: &[u8] = b"-ERR Protocol version is not an integer or out of range\r\n";
pub const NOT_AN_INTEGER: &[u8] = b"-ERR value is not an integer or out of range\r\n";
pub const DB_OUT_OF_RANGE: &[u8] = b"-ERR DB index is out of range\r\n";
pub const SELECT_IN_CLUSTER: &[u8] = b"-ERR SELECT is not allowed in cluster mode\r\n";
pub const BAD_CLIENT_NAME: &[u8] =
    b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n";
pub const EXEC_WITHOUT_MULTI: &[u8] = b"-ERR EXEC without MULTI\r\n";
pub const DISCARD_WITHOUT_MULTI: &[u8] = b"-ERR DISCARD without MULTI\r\n";
pub const MAX_CLIENTS: &[u8] = b"-ERR max number of clients reached\r\n";
pub const QUEUED: &[u8] = b"+QUEUED\r\n";
pub const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";
pub const MULTI_NESTED: &[u8] = b"-ERR MULTI calls can not be nested\r\n";
pub const WATCH_IN_MULTI: &[u8] = b"-ERR WATCH inside MULTI is not allowed\r\n";
/// Redis Cluster's reply for keys in several slots.
pub const CROSSSLOT: &[u8] = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";
/// Redis Cluster's reply for a slot nobody serves.
pub const CLUSTERDOWN: &[u8] = b"-CLUSTERDOWN Hash slot not served\r\n";
/// SCAN's reply to a cursor that is not a number.
pub const INVALID_CURSOR: &[u8] = b"-ERR invalid cursor\r\n";
/// CLIENT LIST ID with an id that is not a number.
pub const INVALID_CLIENT_ID: &[u8] = b"-ERR Invalid client ID\r\n";
/// CLIENT KILL ID with an id that is not a positive number.
pub const CLIENT_ID_NOT_POSITIVE: &[u8] = b"-ERR client-id should be greater than 0\r\n";
/// CLIENT KILL <addr> (the old form) when no client has that address.
pub const NO_SUCH_CLIENT: &[u8] = b"-ERR No such client\r\n";
/// CLIENT TRACKING … REDIRECT <id> naming no connected client.
pub const REDIRECT_TARGET_MISSING: &[u8] =
    b"-ERR The client ID you want redirect to does not exist\r\n";
/// What a client blocked in a command gets from CLIENT UNBLOCK … ERROR.
pub const UNBLOCKED: &[u8] = b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n";
/// CLIENT UNBLOCK with a reason other than TIMEOUT or ERROR.
pub const UNBLOCK_REASON: &[u8] = b"-ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR\r\n";
/// CLIENT TRACKING with REDIRECT given twice.
pub const REDIRECT_TWICE: &[u8] = b"-ERR A client can only redirect to a single other client\r\n";

/// `-ERR wrong number of arguments for '<name>' command`.
pub fn wrong_arity(out: &mut BytesMut, name: &str) {
    out.put_slice(b"-ERR wrong number of arguments for '");
    out.put_slice(name.as_bytes());
    out.put_slice(b"' command\r\n");
}

/// `-NOPERM User <user> has no permissions to run the '<command>' command`: Redis's reply
/// to a command its ACL refuses, `command` being the name Redis prints (`get`,
/// `config|set`). Redis 7.2's wording; 7.0 says `this user` instead of `User <user>`. CR
/// and LF become spaces, as Redis's `rejectCommandFormat` makes them, so a name cannot
/// break the reply's framing.
pub fn noperm_command(out: &mut BytesMut, user: &str, command: &str) {
    let start = out.len();
    out.put_slice(b"-NOPERM User ");
    out.put_slice(user.as_bytes());
    out.put_slice(b" has no permissions to run the '");
    out.put_slice(command.as_bytes());
    out.put_slice(b"' command");
    for b in &mut out[start..] {
        if *b == b'\r' || *b == b'\n' {
            *b = b' ';
        }
    }
    out.put_slice(b"\r\n");
}

/// `-ERR unknown subcommand '<sub>'. Try <CONTAINER> HELP.`, the subcommand cut at 128
/// bytes as Redis does.
pub fn unknown_subcommand(out: &mut BytesMut, container: &[u8], sub: &[u8]) {
    let mut text = b"ERR unknown subcommand '".to_vec();
    text.extend_from_slice(&sub[..sub.len().min(128)]);
    text.extend_from_slice(b"'. Try ");
    text.extend(container.iter().map(u8::to_ascii_uppercase));
    text.extend_from_slice(b" HELP.");
    encode::error(out, &text);
}

/// `-ERR Syntax error in HELLO option '<opt>'`.
pub fn hello_syntax(out: &mut BytesMut, option: &[u8]) {
    let mut text = b"ERR Syntax error in HELLO option '".to_vec();
    text.extend_from_slice(c_string(option));
    text.push(b'\'');
    encode::error(out, &text);
}

/// `-ERR Unrecognized option '<attr>'` (CLIENT SETINFO).
pub fn setinfo_unknown(out: &mut BytesMut, attribute: &[u8]) {
    let mut text = b"ERR Unrecognized option '".to_vec();
    text.extend_from_slice(c_string(attribute));
    text.push(b'\'');
    encode::error(out, &text);
}

/// `-ERR <attr> cannot contain spaces, newlines or special characters.` (CLIENT SETINFO).
pub fn setinfo_bad_value(out: &mut BytesMut, attribute: &[u8]) {
    let mut text = b"ERR ".to_vec();
    text.extend_from_slice(c_string(attribute));
    text.extend_from_slice(b" cannot contain spaces, newlines or special characters.");
    encode::error(out, &text);
}

/// `-ERR Unknown client type '<type>'` (CLIENT LIST TYPE, CLIENT KILL TYPE).
pub fn unknown_client_type(out: &mut BytesMut, name: &[u8]) {
    let mut text = b"ERR Unknown client type '".to_vec();
    text.extend_from_slice(c_string(name));
    text.push(b'\'');
    encode::error(out, &text);
}

/// `-ERR unknown subcommand or wrong number of arguments for '<sub>'. Try <CONTAINER> HELP.`
/// (a subcommand Redis knows, with a number of arguments it has no branch for).
pub fn subcommand_syntax(out: &mut BytesMut, container: &[u8], sub: &[u8]) {
    let mut text = b"ERR unknown subcommand or wrong number of arguments for '".to_vec();
    text.extend_from_slice(&c_string(sub)[..c_string(sub).len().min(128)]);
    text.extend_from_slice(b"'. Try ");
    text.extend(container.iter().map(u8::to_ascii_uppercase));
    text.extend_from_slice(b" HELP.");
    encode::error(out, &text);
}

/// `-ERR No such user '<name>'` (CLIENT KILL USER).
pub fn no_such_user(out: &mut BytesMut, name: &[u8]) {
    let mut text = b"ERR No such user '".to_vec();
    text.extend_from_slice(c_string(name));
    text.push(b'\'');
    encode::error(out, &text);
}

/// The reasons the ambassador gives for a refusal (the `<reason>` of [`unsupported`]),
/// the last resort where it cannot do what Redis would.
pub mod refusal {
    pub const REPLICATION: &str =
        "in cluster mode a replica must connect to the node it replicates";
    pub const REPLICATION_IN_RELAY: &str =
        "a connection in pub/sub, MONITOR or tracking mode cannot become a replica's";
    pub const IN_MULTI: &str = "not inside MULTI";
    pub const NO_TOUCH_IN_CLUSTER: &str =
        "in cluster mode (a client's commands go to every node over shared connections)";
    pub const REDIRECT_TARGET_BUSY: &str = "the REDIRECT target is in a transaction or a \
        blocking command and got no connection of its own in time";
    pub const TRACKING_IN_CLUSTER: &str =
        "in cluster mode (keys on other masters would not be tracked)";
    pub const SHARD_IN_MULTI: &str = "inside MULTI in cluster mode";
    pub const LOCAL_IN_RELAYED_MULTI: &str =
        "inside MULTI while pub/sub, CLIENT TRACKING or CLIENT REPLY is in force";
    pub const OTHER_NODE: &str =
        "keys of another cluster node while pub/sub, CLIENT TRACKING or CLIENT REPLY is in force";
    pub const OTHER_NODE_IN_MULTI: &str = "keys of another cluster node inside MULTI while \
        pub/sub, CLIENT TRACKING or CLIENT REPLY is in force";
    pub const OTHER_NODE_BLOCKING: &str = "a blocking command for another cluster node while \
        pub/sub, CLIENT TRACKING or CLIENT REPLY is in force";
}

/// A command the proxy will not run, with the reason: `-ERR '<name>' is not supported by
/// redis-ambassador: <reason>`.
pub fn unsupported(out: &mut BytesMut, name: &str, reason: &str) {
    out.put_slice(b"-ERR '");
    out.put_slice(name.as_bytes());
    out.put_slice(b"' is not supported by redis-ambassador: ");
    out.put_slice(reason.as_bytes());
    out.put_slice(b"\r\n");
}

/// Redis's refusal of a command in RESP2 subscribed mode.
pub fn not_in_subscribed_context(out: &mut BytesMut, full_name: &str) {
    out.put_slice(b"-ERR Can't execute '");
    out.put_slice(full_name.as_bytes());
    out.put_slice(
        b"': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
    );
}

/// A (un)subscribe confirmation as Redis writes it: `[kind, channel, count]`, a push in
/// RESP3; no channel is a null (SUNSUBSCRIBE with nothing subscribed).
pub fn subscription(
    out: &mut BytesMut,
    proto: crate::protocol::Proto,
    kind: &[u8],
    channel: Option<&[u8]>,
    count: usize,
) {
    out.extend_from_slice(if proto == crate::protocol::Proto::Resp3 {
        b">3\r\n"
    } else {
        b"*3\r\n"
    });
    encode::bulk(out, kind);
    match channel {
        Some(channel) => encode::bulk(out, channel),
        None => encode::null(out, proto),
    }
    encode::integer(out, count as i64);
}

/// A null array: RESP2 `*-1`, RESP3 `_` (a blocking command's timeout).
pub fn null_array(out: &mut BytesMut, proto: crate::protocol::Proto) {
    out.put_slice(match proto {
        crate::protocol::Proto::Resp2 => b"*-1\r\n",
        crate::protocol::Proto::Resp3 => b"_\r\n",
    });
}

/// PING's reply in RESP2 subscribed mode: `["pong", argument or ""]`.
pub fn subscribed_pong(out: &mut BytesMut, argument: Option<&[u8]>) {
    out.put_slice(b"*2\r\n$4\r\npong\r\n");
    encode::bulk(out, argument.unwrap_or(b""));
}

/// EXEC of a transaction the ambassador had to keep to itself (no dedicated upstream
/// connection could be had when it began): Redis's EXECABORT, with the reason.
pub fn execabort_because(out: &mut BytesMut, reason: &impl std::fmt::Display) {
    encode::error(
        out,
        format!("EXECABORT Transaction discarded because of previous errors: {reason}").as_bytes(),
    );
}

/// An error the proxy makes (`ERR <text>`): upstream trouble and the like.
pub fn proxy_error(out: &mut BytesMut, error: &impl std::fmt::Display) {
    encode::error(out, format!("ERR {error}").as_bytes());
}

/// A request of a user with command rules when those rules cannot be checked (the
/// upstream's command table could not be read, or the rules name what this upstream does
/// not know): refused rather than forwarded unchecked.
pub fn policy_unavailable(out: &mut BytesMut, user: &str, reason: &impl std::fmt::Display) {
    encode::error(
        out,
        format!("ERR the command rules of user {user} cannot be checked, so the command is refused: {reason}")
            .as_bytes(),
    );
}

/// `%s` formatting of an sds stops at the first NUL.
fn c_string(s: &[u8]) -> &[u8] {
    match s.iter().position(|&b| b == 0) {
        Some(end) => &s[..end],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        let mut out = BytesMut::new();
        wrong_arity(&mut out, "client|setname");
        unknown_subcommand(&mut out, b"client", b"FOO");
        hello_syntax(&mut out, b"AUTH");
        assert_eq!(
            &out[..],
            &b"-ERR wrong number of arguments for 'client|setname' command\r\n\
               -ERR unknown subcommand 'FOO'. Try CLIENT HELP.\r\n\
               -ERR Syntax error in HELLO option 'AUTH'\r\n"[..]
        );
        let mut out = BytesMut::new();
        proxy_error(&mut out, &"upstream timed out: no reply within 5 ms");
        assert_eq!(
            &out[..],
            b"-ERR upstream timed out: no reply within 5 ms\r\n"
        );
        let mut out = BytesMut::new();
        unknown_subcommand(&mut out, b"client", b"a\r\nb");
        assert_eq!(
            &out[..],
            b"-ERR unknown subcommand 'a  b'. Try CLIENT HELP.\r\n"
        );
        let mut out = BytesMut::from(&b"+OK\r\n"[..]);
        noperm_command(&mut out, "report", "config|set");
        noperm_command(&mut out, "a\r\nb", "get");
        assert_eq!(
            &out[..],
            &b"+OK\r\n\
               -NOPERM User report has no permissions to run the 'config|set' command\r\n\
               -NOPERM User a  b has no permissions to run the 'get' command\r\n"[..]
        );
    }
}

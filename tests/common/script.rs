//! Scripts run against bare Redis and through the proxy: a list of steps (client `c`
//! sends these commands and reads that many replies) is run once on a bare Redis and once
//! through the proxy, and every compared step must give the same bytes.

use std::thread;
use std::time::Duration;

use super::{Ambassador, AmbassadorBuilder, RawConn, RedisServer, escape_short, resp, wait_until};

/// Several commands in one write.
pub fn cmds(list: &[&[&str]]) -> Vec<u8> {
    list.iter().flat_map(|c| resp(c)).collect()
}

/// Where a scripted client connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The server under test: bare Redis, or the proxy.
    Main,
    /// The Redis behind it, directly: bare Redis itself, or the proxy's upstream.
    Direct,
}

/// One step of a script. Replies are counted in frames: a pushed message counts as one.
pub enum Step {
    /// Client `c` sends `input` in one write and reads `n` replies (compared).
    Send { c: usize, input: Vec<u8>, n: usize },
    /// Client `c` sends each command in its own write (20 ms apart, so they arrive as
    /// separate reads), then reads `n` replies (compared).
    SendEach {
        c: usize,
        list: Vec<Vec<u8>>,
        n: usize,
    },
    /// Like `Send`, but the replies are not compared (HELLO carries the client id, which
    /// differs); only their count.
    Unchecked { c: usize, input: Vec<u8>, n: usize },
    /// Wait (at most 5 s) until the Redis behind has `n` blocked clients.
    Blocked(u64),
}

/// Client `c` sends `list` in one write and reads `n` replies.
pub fn send(c: usize, list: &[&[&str]], n: usize) -> Step {
    Step::Send {
        c,
        input: cmds(list),
        n,
    }
}

/// Client `c` sends each of `list` in its own write and reads `n` replies.
pub fn send_each(c: usize, list: &[&[&str]], n: usize) -> Step {
    Step::SendEach {
        c,
        list: list.iter().map(|a| resp(a)).collect(),
        n,
    }
}

/// Client `c` switches to RESP3 (the reply, which carries the client id, is not compared).
pub fn hello3(c: usize) -> Step {
    Step::Unchecked {
        c,
        input: resp(&["HELLO", "3"]),
        n: 1,
    }
}

/// `n` replies, concatenated.
#[track_caller]
pub fn read_n(conn: &mut RawConn, n: usize) -> Vec<u8> {
    conn.read_replies(n).concat()
}

/// Reads `n` replies; on EOF or timeout panics naming the step and what came so far.
#[track_caller]
fn read_step(
    conn: &mut RawConn,
    n: usize,
    who: &str,
    step: usize,
    c: usize,
    input: &[u8],
) -> Vec<u8> {
    let mut got = Vec::new();
    for k in 0..n {
        match conn.try_read_reply(conn.timeout) {
            Some(r) => got.extend_from_slice(&r),
            None => panic!(
                "{who}: step {step} (client {c}: \"{}\"): reply {} of {n} did not come (EOF or {:?} timeout); had \"{}\"",
                escape_short(input, 300),
                k + 1,
                conn.timeout,
                escape_short(&got, 1000)
            ),
        }
    }
    got
}

/// `blocked_clients` of the Redis on `port` (no auth).
pub fn blocked_clients(port: u16) -> u64 {
    let mut c = RawConn::connect(port);
    let info = c.call(&["INFO", "clients"]);
    let text = String::from_utf8_lossy(&info).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no blocked_clients in INFO: {text}"))
}

/// Waits (at most 5 s) until the Redis on `port` has `n` blocked clients.
#[track_caller]
pub fn wait_blocked(port: u16, n: u64) {
    assert!(
        wait_until(Duration::from_secs(5), || blocked_clients(port) == n),
        "Redis on port {port} did not reach {n} blocked clients (has {})",
        blocked_clients(port)
    );
}

/// Runs `steps` with clients connected per `clients` (`main` for `Via::Main`, `direct`
/// for `Via::Direct`). With `want` (the bare run's transcript) every compared step must
/// produce the same bytes; every differing step is reported, not only the first. Then no
/// client may have more to read than the script asked for (a client that QUIT reads EOF).
/// Returns the transcript (one entry per step).
pub fn run_script(
    main: u16,
    direct: u16,
    clients: &[Via],
    steps: &[Step],
    want: Option<&[Vec<u8>]>,
) -> Vec<Vec<u8>> {
    let who = if want.is_some() {
        "proxy"
    } else {
        "bare Redis"
    };
    let mut conns: Vec<RawConn> = clients
        .iter()
        .map(|v| {
            RawConn::connect(match v {
                Via::Main => main,
                Via::Direct => direct,
            })
        })
        .collect();
    let mut transcript = Vec::new();
    let mut mismatches = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let (got, label) = match step {
            Step::Send { c, input, n } | Step::Unchecked { c, input, n } => {
                let conn = &mut conns[*c];
                conn.send(input);
                let got = read_step(conn, *n, who, i, *c, input);
                let label = matches!(step, Step::Send { .. })
                    .then(|| format!("step {i} (client {c}: \"{}\")", escape_short(input, 300)));
                (got, label)
            }
            Step::SendEach { c, list, n } => {
                let conn = &mut conns[*c];
                for (j, cmd) in list.iter().enumerate() {
                    if j > 0 {
                        thread::sleep(Duration::from_millis(20));
                    }
                    conn.send(cmd);
                }
                let got = read_step(conn, *n, who, i, *c, &list.concat());
                (
                    got,
                    Some(format!("step {i} (client {c}, one command per write)")),
                )
            }
            Step::Blocked(n) => {
                wait_blocked(direct, *n);
                (Vec::new(), None)
            }
        };
        if let (Some(want), Some(label)) = (want, label) {
            if want[i] != got {
                mismatches.push(mismatch(&label, &want[i], &got));
            }
        }
        transcript.push(got);
    }
    assert!(
        mismatches.is_empty(),
        "{who} differs from bare Redis:\n{}",
        mismatches.join("\n")
    );
    for (c, conn) in conns.iter_mut().enumerate() {
        if let Some(extra) = conn.try_read_reply(Duration::from_millis(150)) {
            panic!(
                "{who}: client {c} got an unexpected extra reply \"{}\"",
                escape_short(&extra, 500)
            );
        }
    }
    transcript
}

/// One differing step, for the end-of-script report.
pub fn mismatch(what: &str, want: &[u8], got: &[u8]) -> String {
    format!(
        "{what}: bytes differ\n  expected: \"{}\"\n  got:      \"{}\"",
        escape_short(want, 1500),
        escape_short(got, 1500)
    )
}

/// Runs the script on bare Redis, then through the proxy (its clients on `Via::Direct`
/// connect to the proxy's upstream `up`), and asserts both gave the same bytes. Returns
/// the bare run's transcript.
#[track_caller]
pub fn diff_script(
    bare: &RedisServer,
    up: &RedisServer,
    proxy: &Ambassador,
    clients: &[Via],
    steps: &[Step],
) -> Vec<Vec<u8>> {
    let want = run_script(bare.port(), bare.port(), clients, steps, None);
    run_script(proxy.port(), up.port(), clients, steps, Some(&want));
    want
}

/// Bare Redis, the upstream, and a proxy in front of it with `pool_size` (and
/// `max_pinned` if given).
pub fn setup(pool_size: u32, max_pinned: Option<u64>) -> (RedisServer, RedisServer, Ambassador) {
    let bare = RedisServer::start();
    let up = RedisServer::start();
    let mut b = AmbassadorBuilder::for_server(&up).pool_size(pool_size);
    if let Some(n) = max_pinned {
        b = b.max_pinned(n);
    }
    (bare, up, b.start())
}

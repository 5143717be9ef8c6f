//! The session target: the real `Session` (src/session/) serving one client connection over
//! loopback TCP, with a fake upstream (`fake.rs`) behind the real upstream code (lanes,
//! pinned pool, handshake), fed a stream of random frames mixed with the proxy's local
//! commands (`input.rs`), and checked against a model (`model.rs`).
//!
//! Properties, for every input:
//!
//! - the exchange ends: the session closes the connection (after the client's half-close,
//!   or by itself after QUIT, an HTTP probe or a protocol error) within 10 s, and its task
//!   finishes;
//! - everything the client receives is a sequence of complete, well-formed RESP frames
//!   (read with the project's reply scanner): no partial frame before the close, no reset;
//! - the number of replies is the number of complete requests (found by the project's
//!   request scanner) up to the first protocol error, plus one `-ERR Protocol error: …`
//!   reply for that error, after which the connection closes; QUIT ends with `+OK` and an
//!   HTTP probe with nothing;
//! - each reply is the one the model predicts: exact bytes for PING, ECHO, SELECT,
//!   AUTH, CLIENT GETNAME/SETNAME, MULTI/EXEC/DISCARD (EXEC's array element by element),
//!   RESET, NOAUTH refusals — and for every forwarded command, whose fake reply names the
//!   database and protocol of the upstream connection it ran on and hashes the arguments
//!   received, so a command forwarded altered, on a connection in the wrong state, or
//!   answered out of order fails; the shape (`*14` / `%7`, `:`, `$` / `=`) for HELLO,
//!   CLIENT ID and CLIENT INFO; "an error" for the other errors.
//!
//! When the client half-closes early (`Plan::early_close`) while a blocking command runs,
//! or when relay mode starts (the model stops predicting), or when bytes follow a closing
//! request (`Plan::trailing`, the close may then be a reset), the received replies must be a
//! prefix of the predicted ones instead of all of them.
//!
//! The proxy bugs this target found (fuzz/README.md, "Findings") are fixed; the harness's
//! workarounds for them ("Known bug N" here and in `model.rs`) apply only with
//! `SESSION_FUZZ_STRICT=0`, to fuzz an older proxy.

mod fake;
mod input;
mod model;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_ambassador::auth::ClientAuth;
use redis_ambassador::config::Config;
use redis_ambassador::credentials::Secrets;
use redis_ambassador::net::ClientStream;
use redis_ambassador::protocol::{ReplyScanner, RequestLimits, RequestScanner};
use redis_ambassador::secret::{RotatingSecret, Secret};
use redis_ambassador::session::{Session, Shared};
use redis_ambassador::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use input::Plan;
use model::{End, Expect, Expected};

/// An exchange that takes longer than this is a hang. Generous: the machine is shared,
/// the fuzzer is instrumented, and nothing in a healthy exchange waits on a timer.
/// `SESSION_FUZZ_HANG_MS` overrides it (shorter, for `cargo fuzz tmin` of a hang).
fn hang_limit() -> Duration {
    static LIMIT: OnceLock<Duration> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("SESSION_FUZZ_HANG_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(10), Duration::from_millis)
    })
}

/// Whether the harness checks strictly (the default: the bugs it found are fixed);
/// `SESSION_FUZZ_STRICT=0` turns the workarounds for them back on, for an older proxy.
pub(crate) fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("SESSION_FUZZ_STRICT").is_none_or(|v| v != "0"))
}

/// `[limits] max_in_flight` of the small-batch proxies: a pipeline of a few requests
/// already spans several batches.
const SMALL_BATCH: usize = 3;

struct Harness {
    rt: tokio::runtime::Runtime,
    listener: TcpListener,
    /// Indexed by `auth_required as usize * 2 + small_batches as usize`: `nopass` (every
    /// client authenticated from the start) or the users of `model::USERS`, with the
    /// default `max_in_flight` or [`SMALL_BATCH`].
    proxies: Vec<Arc<Shared>>,
}

/// One runtime, one fake upstream, one listener and four proxies (with and without client
/// authentication, with default and small batches) for the whole process: upstream
/// connections and pools persist across inputs, as they do across clients in the proxy.
fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (listener, proxies) = rt.block_on(async {
            let upstream = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind fake upstream");
            let address = upstream.local_addr().expect("fake upstream address");
            tokio::spawn(fake::serve(upstream));
            let config: Config = format!(
                "[upstream]\naddress = \"{address}\"\npool_size = 2\nconnect_timeout_ms = 5000\n\
                 command_timeout_ms = 8000\n"
            )
            .parse()
            .expect("fuzz config");
            // No secret files: no upstream password, no TLS.
            let secrets = Secrets::load(&config).expect("fuzz secrets");
            let mut proxies = Vec::new();
            for auth in [false, true] {
                for small in [false, true] {
                    let users = auth.then(|| {
                        model::USERS
                            .iter()
                            .map(|(user, password)| {
                                let secret = RotatingSecret::fixed(Secret::new(
                                    password.as_bytes().to_vec(),
                                ));
                                ((*user).to_owned(), Arc::new(secret))
                            })
                            .collect()
                    });
                    let mut shared = Shared::new(
                        Upstream::new(&config, &secrets),
                        ClientAuth::new(users),
                        config.request_limits(),
                    );
                    if small {
                        shared = shared.with_max_in_flight(SMALL_BATCH);
                    }
                    proxies.push(Arc::new(shared));
                }
            }
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
            (listener, proxies)
        });
        Harness {
            rt,
            listener,
            proxies,
        }
    })
}

/// What the client saw.
#[derive(Debug, Default)]
struct Seen {
    frames: Vec<Vec<u8>>,
    /// Bytes after the last complete frame.
    tail: Vec<u8>,
    /// The reply scanner refused the stream.
    malformed: Option<String>,
    eof: bool,
    /// The read failed (a reset).
    error: Option<std::io::ErrorKind>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    frames: usize,
    done: bool,
}

/// The session properties for one fuzz input.
pub fn check_session(data: &[u8]) {
    let plan = input::decode(data);
    let expected = model::expect(&plan.bytes, plan.auth_required);
    let h = harness();
    let seen = h.rt.block_on(exchange(h, &plan, &expected));
    if std::env::var_os("SESSION_FUZZ_VERBOSE").is_some() {
        report(&plan, &expected, &seen);
    }
    verify(&plan, &expected, &seen);
}

async fn exchange(h: &Harness, plan: &Plan, expected: &Expected) -> Seen {
    let shared = &h.proxies[usize::from(plan.auth_required) * 2 + usize::from(plan.small_batches)];
    let address = h.listener.local_addr().expect("proxy address");
    let (client, accepted) = tokio::join!(TcpStream::connect(address), h.listener.accept());
    let client = client.expect("connect to the proxy");
    let (server, peer) = accepted.expect("accept");
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    // Closed with a reset once done, so 600 000 runs leave no TIME_WAIT sockets behind.
    #[allow(deprecated)]
    let _ = client.set_linger(Some(Duration::ZERO));
    let local = server.local_addr().unwrap_or(peer);
    let session = Session::new(shared.clone(), peer, local);
    let task = tokio::spawn(session.run(ClientStream::Plain(server), CancellationToken::new()));

    let (reader, writer) = client.into_split();
    let (tx, rx) = watch::channel(Progress::default());
    let mut seen = Seen::default();
    let limit = hang_limit();
    let finished = tokio::time::timeout(limit, async {
        tokio::join!(
            read_replies(reader, &mut seen, &tx),
            write_plan(writer, plan, expected, rx)
        )
    })
    .await;
    if finished.is_err() {
        report(plan, expected, &seen);
        panic!("hang: the session did not close the connection within {limit:?}");
    }
    match tokio::time::timeout(limit, task).await {
        Err(_) => {
            report(plan, expected, &seen);
            panic!("hang: the session task still runs {limit:?} after the client saw the close");
        }
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(_) => {}
    }
    seen
}

async fn read_replies(
    mut reader: OwnedReadHalf,
    seen: &mut Seen,
    progress: &watch::Sender<Progress>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut start = 0;
    let mut scanner = ReplyScanner::new(crate::REPLY_MAX_DEPTH);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) => {
                seen.eof = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                seen.error = Some(e.kind());
                break;
            }
        }
        while seen.malformed.is_none() {
            match scanner.scan(&buf[start..]) {
                Ok(Some(frame)) => {
                    seen.frames.push(buf[start..start + frame.len].to_vec());
                    start += frame.len;
                }
                Ok(None) => break,
                Err(e) => seen.malformed = Some(format!("{e:?} at byte {start}")),
            }
        }
        progress.send_modify(|p| p.frames = seen.frames.len());
    }
    seen.tail = buf[start..].to_vec();
    progress.send_modify(|p| p.done = true);
}

/// Waits until `n` replies have arrived or the connection is closed.
async fn wait_for(rx: &mut watch::Receiver<Progress>, n: usize) {
    let _ = rx.wait_for(|p| p.frames >= n || p.done).await;
}

async fn write_plan(
    mut writer: OwnedWriteHalf,
    plan: &Plan,
    expected: &Expected,
    mut rx: watch::Receiver<Progress>,
) {
    let mut len = if plan.trailing {
        plan.bytes.len()
    } else {
        expected.send_len
    };
    if !strict() {
        // Known bugs 3 to 6: see `model::relay_cut`.
        len = len.min(expected.relay_cut.unwrap_or(usize::MAX));
    }
    let mut cuts = plan.cuts.clone();
    if !strict() {
        // Known bug 2: write nothing after a blocking command until it is answered.
        cuts.extend(expected.blocking_ends.iter().map(|&end| (end, true)));
        cuts.sort_unstable();
    }
    let mut at = 0;
    for &(cut, wait) in &cuts {
        if cut > len {
            break;
        }
        if writer.write_all(&plan.bytes[at..cut]).await.is_err() {
            return;
        }
        at = cut;
        if wait {
            wait_for(&mut rx, expected.owed_by(cut)).await;
        }
    }
    if writer.write_all(&plan.bytes[at..len]).await.is_err() {
        return;
    }
    if !plan.early_close && expected.end != End::Unknown {
        wait_for(&mut rx, expected.replies.len()).await;
    }
    let _ = writer.shutdown().await;
    // Keep the write half (and so the socket) until the reader is done.
    wait_for(&mut rx, usize::MAX).await;
}

fn matches(expect: &Expect, reply: &[u8]) -> bool {
    match expect {
        Expect::Exact(bytes) => reply == &bytes[..],
        Expect::Prefix(bytes) => reply.starts_with(bytes),
        Expect::Error => reply.first() == Some(&b'-'),
        Expect::Array(elements) => {
            let header = format!("*{}\r\n", elements.len());
            let Some(mut rest) = reply.strip_prefix(header.as_bytes()) else {
                return false;
            };
            for element in elements {
                let mut scanner = ReplyScanner::new(crate::REPLY_MAX_DEPTH);
                let Ok(Some(frame)) = scanner.scan(rest) else {
                    return false;
                };
                if !matches(element, &rest[..frame.len]) {
                    return false;
                }
                rest = &rest[frame.len..];
            }
            rest.is_empty()
        }
    }
}

fn verify(plan: &Plan, expected: &Expected, seen: &Seen) {
    let fail = |what: String| -> ! {
        report(plan, expected, seen);
        panic!("{what}");
    };
    if let Some(e) = &seen.malformed {
        fail(format!("the proxy sent a malformed reply: {e}"));
    }
    // A reset is only acceptable when the client sent bytes the session never read.
    let reset_allowed = plan.trailing && expected.end == End::Closes;
    if seen.error.is_some() && !reset_allowed {
        fail(format!(
            "the connection failed instead of closing: {:?}",
            seen.error
        ));
    }
    if !seen.tail.is_empty() && seen.error.is_none() {
        fail(format!(
            "the connection closed inside a reply: {} bytes after the last complete frame",
            seen.tail.len()
        ));
    }
    let n = expected.replies.len();
    let got = seen.frames.len();
    // A client that half-closes while a blocking command runs is freed, as Redis frees it:
    // the replies may stop there. The harness half-closes at once when relay mode makes
    // the end unknown.
    let half_closed_early = plan.early_close || expected.end == End::Unknown;
    let cut_short_allowed =
        (half_closed_early && expected.blocking) || (reset_allowed && seen.error.is_some());
    match expected.end {
        End::Unknown if !cut_short_allowed && !plan.early_close && got < n => {
            fail(format!("{got} replies before relay mode, {n} expected"))
        }
        End::Unknown => {}
        _ if cut_short_allowed => {
            if got > n {
                fail(format!("{got} replies, at most {n} expected"));
            }
        }
        _ if got != n => fail(format!("{got} replies, {n} expected")),
        _ => {}
    }
    for (i, ((expect, _), reply)) in expected.replies.iter().zip(&seen.frames).enumerate() {
        if !matches(expect, reply) {
            fail(format!(
                "reply {i} is {}, expected {}",
                short(reply),
                describe(expect)
            ));
        }
    }
}

fn describe(expect: &Expect) -> String {
    match expect {
        Expect::Exact(bytes) => short(bytes),
        Expect::Prefix(bytes) => format!("{}…", short(bytes)),
        Expect::Error => "an error".to_owned(),
        Expect::Array(elements) => format!(
            "[{}]",
            elements.iter().map(describe).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Prints what was sent, predicted and received, for a failing input.
fn report(plan: &Plan, expected: &Expected, seen: &Seen) {
    eprintln!("--- session input ---");
    eprintln!(
        "auth_required={} early_close={} trailing={} small_batches={} cuts={:?}",
        plan.auth_required, plan.early_close, plan.trailing, plan.small_batches, plan.cuts
    );
    eprintln!("bytes ({}): {}", plan.bytes.len(), short(&plan.bytes));
    eprintln!("requests (as an authenticated client's scanner reads them):");
    let mut scanner = RequestScanner::new(RequestLimits::default());
    let mut buf = BytesMut::from(&plan.bytes[..]);
    for i in 0.. {
        match scanner.next(&mut buf, false) {
            Ok(Some(request)) => {
                let args: Vec<String> = request.args.iter().map(|a: &Bytes| short(a)).collect();
                eprintln!("  {i}: {}", args.join(" "));
            }
            Ok(None) => break,
            Err(e) => {
                eprintln!("  {i}: protocol error {e:?}");
                break;
            }
        }
    }
    eprintln!("the model read {} of them", expected.requests.len());
    eprintln!(
        "expected ({:?}, send_len {}, blocking {}):",
        expected.end, expected.send_len, expected.blocking
    );
    for (i, (e, at)) in expected.replies.iter().enumerate() {
        eprintln!("  {i} (@{at}): {}", describe(e));
    }
    eprintln!(
        "received (eof {}, error {:?}, tail {}):",
        seen.eof,
        seen.error,
        short(&seen.tail)
    );
    for (i, f) in seen.frames.iter().enumerate() {
        eprintln!("  {i}: {}", short(f));
    }
}

/// [`crate::escape`], cut to a readable length.
fn short(bytes: &[u8]) -> String {
    const MAX: usize = 300;
    if bytes.len() <= MAX {
        return crate::escape(bytes);
    }
    format!("{}… ({} bytes)", crate::escape(&bytes[..MAX]), bytes.len())
}

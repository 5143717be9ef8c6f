//! Sentinel mode (`[upstream] mode = "sentinel"`), against a real set-up: one master, one
//! replica and three Sentinels, every one of them password-protected. The application's
//! client stays a plain, non-Sentinel client of the ambassador.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const MASTER_NAME: &str = "mymaster";
const DATA_PW: &str = "data-pw";
const SENTINEL_PW: &str = "sentinel-pw";

struct SentinelSetup {
    master: RedisServer,
    replica: RedisServer,
    sentinels: Vec<RedisServer>,
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    assert!(wait_until(timeout, &mut f), "timed out waiting for {what}");
}

fn info_field(conn: &mut RawConn, section: &str, field: &str) -> Option<String> {
    let reply = conn.call(&["INFO", section]);
    let text = String::from_utf8_lossy(&reply).into_owned();
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_owned())
    })
}

fn role(server: &RedisServer) -> String {
    info_field(&mut server.conn(), "replication", "role").unwrap_or_default()
}

impl SentinelSetup {
    fn start() -> SentinelSetup {
        let data = ServerAuth::Password(DATA_PW.to_owned());
        let masterauth = format!("masterauth \"{DATA_PW}\"");
        let master = RedisServer::start_with(data.clone(), &[&masterauth]);
        let replicaof = format!("replicaof 127.0.0.1 {}", master.port());
        let replica = RedisServer::start_with(data, &[&masterauth, &replicaof]);
        wait_for("the replica's link", Duration::from_secs(20), || {
            info_field(&mut replica.conn(), "replication", "master_link_status").as_deref()
                == Some("up")
        });
        let monitor = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2",
            master.port()
        );
        let auth_pass = format!("sentinel auth-pass {MASTER_NAME} {DATA_PW}");
        let down_after = format!("sentinel down-after-milliseconds {MASTER_NAME} 1000");
        let failover_timeout = format!("sentinel failover-timeout {MASTER_NAME} 5000");
        let sentinel_pass = format!("sentinel sentinel-pass {SENTINEL_PW}");
        let lines = [
            monitor.as_str(),
            &auth_pass,
            &down_after,
            &failover_timeout,
            &sentinel_pass,
        ];
        let sentinels: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_sentinel(ServerAuth::Password(SENTINEL_PW.to_owned()), &lines)
            })
            .collect();
        // Every Sentinel knows the replica and the other Sentinels: a failover can happen.
        for s in &sentinels {
            wait_for("the Sentinels' quorum", Duration::from_secs(30), || {
                s.conn()
                    .call(&["SENTINEL", "CKQUORUM", MASTER_NAME])
                    .starts_with(b"+OK")
                    && sentinel_count(s, "num-other-sentinels") == 2
                    && sentinel_count(s, "num-slaves") == 1
            });
        }
        SentinelSetup {
            master,
            replica,
            sentinels,
        }
    }

    fn proxy(&self, dir: &tempfile::TempDir) -> AmbassadorBuilder {
        self.proxy_with(dir, SENTINEL_PW, MASTER_NAME)
    }

    fn proxy_with(
        &self,
        dir: &tempfile::TempDir,
        sentinel_password: &str,
        master_name: &str,
    ) -> AmbassadorBuilder {
        let pw_file = dir.path().join(format!("sentinel-password-{master_name}"));
        std::fs::write(&pw_file, sentinel_password).expect("write the Sentinel password");
        let others: Vec<String> = self.sentinels[1..].iter().map(RedisServer::addr).collect();
        AmbassadorBuilder::new(&self.sentinels[0].addr())
            .upstream_password(DATA_PW.as_bytes())
            .configure(|c| {
                c.upstream.mode = Some(UpstreamMode::Sentinel);
                c.upstream.addresses = Some(others);
                c.upstream.master_name = Some(master_name.to_owned());
                c.upstream.sentinel_password_file = Some(pw_file);
            })
            .pool_size(2)
            .connect_timeout_ms(1000)
            .command_timeout_ms(3000)
            .reconnect_backoff_ms(50)
            .reconnect_backoff_max_ms(400)
    }
}

/// A field of `SENTINEL MASTER <name>` (a flat array of names and values) as a number.
fn sentinel_count(sentinel: &RedisServer, field: &str) -> u64 {
    let reply = sentinel.conn().call(&["SENTINEL", "MASTER", MASTER_NAME]);
    let text = String::from_utf8_lossy(&reply).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .position(|l| *l == field)
        .and_then(|i| lines.get(i + 2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ambassador-sentinel-")
        .tempdir()
        .expect("tempdir")
}

/// A plain client through the ambassador reads and writes the master the Sentinels name,
/// then keeps working across `SENTINEL FAILOVER` while four clients write: errors only
/// during the switch, never `-READONLY` (no write reaches the demoted master), no INCR
/// counted twice, every write after the switch on the new master — without restarting the
/// ambassador.
#[test]
fn follows_a_sentinel_failover_while_clients_write() {
    let setup = SentinelSetup::start();
    let dir = temp_dir();
    let proxy = setup.proxy(&dir).start();

    let mut c = proxy.conn();
    c.call_expect(&["SET", "before", "1"], b"+OK\r\n");
    setup
        .master
        .conn()
        .call_expect(&["GET", "before"], b"$1\r\n1\r\n");
    // The client's own handshake: this is "one Redis" to it.
    c.call_expect(&["SELECT", "3"], b"+OK\r\n");
    c.call_expect(&["SET", "db3", "x"], b"+OK\r\n");

    const WRITERS: usize = 4;
    let mut writers = Writers::start(proxy.port(), WRITERS);
    thread::sleep(Duration::from_millis(500));
    let before_switch = writers.acked_total();
    assert!(
        before_switch > 0,
        "no write went through before the failover"
    );

    let started = Instant::now();
    let mut direct = fail_over(&setup, &proxy);
    // Writes keep succeeding after the switch: 200 more acknowledged INCRs.
    let target = writers.acked_total() + 200;
    wait_for("writes after the failover", Duration::from_secs(30), || {
        writers.acked_total() >= target
    });
    writers.stop();
    let switch_time = started.elapsed();

    // A fresh write lands on the new master, and the client's database is still its own.
    c.call_expect(&["SET", "after", "2"], b"+OK\r\n");
    c.call_expect(&["GET", "db3"], b"$1\r\nx\r\n");
    let mut new_master = setup.replica.conn();
    new_master.call_expect(&["SELECT", "3"], b"+OK\r\n");
    new_master.call_expect(&["GET", "after"], b"$1\r\n2\r\n");

    let mut errors = 0;
    for w in 0..WRITERS {
        let ok = writers.acked[w].load(Ordering::Relaxed);
        let bad = writers.failed[w].load(Ordering::Relaxed);
        errors += bad;
        let reply = direct.call(&["GET", &format!("counter:{w}")]);
        let value: u64 = String::from_utf8_lossy(&reply)
            .lines()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // Writes acknowledged by the old master after the replica's promotion are lost
        // (Redis's own asynchronous replication); none may count twice.
        assert!(
            value <= ok + bad,
            "writer {w}: {value} on the new master, but only {ok} acknowledged and {bad} failed"
        );
    }
    let total = writers.acked_total();
    eprintln!(
        "failover: {total} INCRs acknowledged, {errors} errors, switch and 200 writes after it \
         within {switch_time:?}"
    );
    assert!(
        errors < total,
        "more errors ({errors}) than acknowledged writes ({total})"
    );
    let scrape = proxy.scrape();
    assert!(
        scraped_value(&scrape, "redis_ambassador_upstream_master_changes_total") >= 1.0,
        "the master change was not counted:\n{scrape}"
    );
    assert!(proxy.log().contains("new master address"));
}

/// `SENTINEL FAILOVER`, then waits for the replica's promotion, the Sentinels'
/// announcement, and a write through the ambassador that lands on the new master.
/// Returns the connection to the new master that read it back.
fn fail_over(setup: &SentinelSetup, proxy: &Ambassador) -> RawConn {
    let reply = setup.sentinels[0]
        .conn()
        .call(&["SENTINEL", "FAILOVER", MASTER_NAME]);
    assert_eq!(reply, b"+OK\r\n", "SENTINEL FAILOVER: {}", escape(&reply));
    wait_for("the replica's promotion", Duration::from_secs(30), || {
        role(&setup.replica) == "master"
    });
    // Sentinel announces the switch (+switch-master) once the failover ends; until then
    // the old master is still a writable master, for the ambassador as for any Sentinel
    // client. From the announcement on, writes through the ambassador reach the new one.
    let new_address = format!("{}", setup.replica.port());
    wait_for(
        "the Sentinels' announcement",
        Duration::from_secs(30),
        || {
            let reply = setup.sentinels[0].conn().call(&[
                "SENTINEL",
                "GET-MASTER-ADDR-BY-NAME",
                MASTER_NAME,
            ]);
            String::from_utf8_lossy(&reply).contains(&new_address)
        },
    );
    let mut probe = proxy.conn();
    let mut direct = setup.replica.conn();
    let mut n = 0;
    wait_for(
        "a write through the ambassador on the new master",
        Duration::from_secs(10),
        || {
            n += 1;
            let value = n.to_string();
            probe.call(&["SET", "probe", &value]) == b"+OK\r\n"
                && direct.call(&["GET", "probe"]) == bulk(value.as_bytes())
        },
    );
    direct
}

/// Clients writing INCRs through the ambassador, each on its own key `counter:<w>`,
/// counting the acknowledged and the failed replies, until stopped.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Vec<Arc<AtomicU64>>,
    failed: Vec<Arc<AtomicU64>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Writers {
    fn start(port: u16, n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let failed: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let threads = (0..n)
            .map(|w| {
                let (stop, acked, failed) = (stop.clone(), acked[w].clone(), failed[w].clone());
                thread::spawn(move || {
                    let mut c = RawConn::connect(port);
                    c.timeout = Duration::from_secs(10);
                    let key = format!("counter:{w}");
                    while !stop.load(Ordering::Relaxed) {
                        let reply = c.call(&["INCR", &key]);
                        if reply.starts_with(b":") {
                            acked.fetch_add(1, Ordering::Relaxed);
                        } else {
                            assert!(
                                reply.starts_with(b"-ERR upstream "),
                                "writer {w}: unexpected reply \"{}\"",
                                escape(&reply)
                            );
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            failed,
            threads,
        }
    }

    fn acked_total(&self) -> u64 {
        self.acked.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    /// Stops every writer and waits for it (a writer's failed assert fails the test).
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.threads.drain(..) {
            w.join().expect("a writer failed");
        }
    }
}

/// No Sentinel reachable: a distinct error at once, naming the master, not a hang.
#[test]
fn unreachable_sentinels_fail_fast() {
    let dead = [closed_port(), closed_port()];
    let proxy = AmbassadorBuilder::new(&format!("127.0.0.1:{}", dead[0]))
        .configure(|c| {
            c.upstream.mode = Some(UpstreamMode::Sentinel);
            c.upstream.addresses = Some(vec![format!("127.0.0.1:{}", dead[1])]);
            c.upstream.master_name = Some("nowhere".to_owned());
        })
        .pool_wait_timeout_ms(60_000)
        .start();
    let mut c = proxy.conn();
    let reply = c.call(&["GET", "k"]);
    assert!(
        reply.starts_with(
            b"-ERR upstream unavailable: no Sentinel gave the address of master `nowhere`"
        ),
        "{}",
        escape(&reply)
    );
    c.call_expect(&["CLIENT", "SETNAME", "still-usable"], b"+OK\r\n");
}

/// A wrong Sentinel password is an authentication failure, said as such and never
/// echoed; an unknown master name is said too.
#[test]
fn sentinel_credentials_and_master_name_errors() {
    let setup = SentinelSetup::start();
    let dir = temp_dir();
    let proxy = setup
        .proxy_with(&dir, "not-the-sentinel-pw", MASTER_NAME)
        .start();
    let reply = proxy.conn().call(&["GET", "k"]);
    assert!(
        reply.starts_with(b"-ERR upstream authentication failed: Sentinel: WRONGPASS"),
        "{}",
        escape(&reply)
    );
    assert!(!String::from_utf8_lossy(&reply).contains("not-the-sentinel-pw"));
    assert!(!proxy.log().contains("not-the-sentinel-pw"));

    let unknown = setup.proxy_with(&dir, SENTINEL_PW, "othermaster").start();
    let reply = unknown.conn().call(&["GET", "k"]);
    assert!(
        reply.starts_with(
            b"-ERR upstream unavailable: no Sentinel gave the address of master `othermaster`"
        ),
        "{}",
        escape(&reply)
    );
}

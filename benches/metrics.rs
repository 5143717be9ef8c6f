//! Criterion micro-benchmarks of the per-command metrics path (`metrics::record_command`)
//! with the Prometheus recorder installed, as in the running proxy: what every command
//! costs on the hot path (a count, a histogram bucket and a sum in the thread's own block;
//! an error adds a count there and one atomic add on the error class's counter), and what
//! a scrape costs.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use redis_ambassador::command;
use redis_ambassador::metrics::{self, ErrorClass};

fn record(c: &mut Criterion) {
    metrics::install();
    let get = command::id(b"GET");
    let unknown = command::id(b"NOSUCHCOMMAND");
    let wrongtype = Some(ErrorClass::of_reply(b"-WRONGTYPE Operation\r\n"));
    let mut group = c.benchmark_group("record_command");
    for (name, id, error, elapsed) in [
        ("ok", get, None, Duration::from_micros(42)),
        ("other", unknown, None, Duration::from_micros(42)),
        ("ok_slow", get, None, Duration::from_millis(700)),
        ("error", get, wrongtype, Duration::from_micros(42)),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| metrics::record_command(black_box(id), black_box(error), black_box(elapsed)))
        });
    }
    group.finish();

    // A scrape with a realistic number of commands in use.
    for name in [
        "SET", "INCR", "HSET", "HGET", "DEL", "EXPIRE", "MGET", "LPUSH", "EVALSHA",
    ] {
        metrics::record_command(
            command::id(name.as_bytes()),
            None,
            Duration::from_micros(80),
        );
    }
    c.bench_function("render_exposition", |b| {
        b.iter(|| black_box(metrics::render()))
    });
}

criterion_group!(benches, record);
criterion_main!(benches);

//! Criterion micro-benchmarks of the two RESP scanners: requests as redis-benchmark sends
//! them (multibulk SET/GET, a 16-deep pipeline, inline) and typical replies.

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use redis_ambassador::protocol::{ReplyScanner, RequestLimits, RequestScanner};

fn scan_requests(scanner: &mut RequestScanner, input: &[u8]) -> usize {
    let mut buf = BytesMut::from(input);
    let mut n = 0;
    while let Ok(Some(request)) = scanner.next(&mut buf, false) {
        black_box(&request);
        n += 1;
    }
    n
}

fn requests(c: &mut Criterion) {
    let set = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000000042\r\n$3\r\nxxx\r\n".to_vec();
    let pipeline: Vec<u8> = set.repeat(16);
    let inline = b"SET key:000000000042 xxx\r\n".to_vec();
    let mut group = c.benchmark_group("request_scanner");
    for (name, input) in [
        ("set", &set),
        ("set_pipeline_16", &pipeline),
        ("inline_set", &inline),
    ] {
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            let mut scanner = RequestScanner::new(RequestLimits::default());
            b.iter(|| scan_requests(&mut scanner, black_box(input)))
        });
    }
    group.finish();
}

fn replies(c: &mut Criterion) {
    let ok = b"+OK\r\n".to_vec();
    let bulk = b"$3\r\nxxx\r\n".to_vec();
    let array: Vec<u8> = {
        let mut v = b"*100\r\n".to_vec();
        for _ in 0..100 {
            v.extend_from_slice(b"$8\r\nelement1\r\n");
        }
        v
    };
    let mut group = c.benchmark_group("reply_scanner");
    for (name, input) in [("ok", &ok), ("bulk", &bulk), ("array_100", &array)] {
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            let mut scanner = ReplyScanner::new(128);
            b.iter(|| scanner.scan(black_box(input)).ok().flatten().map(|f| f.len))
        });
    }
    group.finish();
}

criterion_group!(benches, requests, replies);
criterion_main!(benches);

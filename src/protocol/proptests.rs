//! Property tests of the scanners, run by `cargo test`: random well-formed input, cut at
//! random points, must come out exactly as it went in; the reply scanner's frame
//! boundaries must agree with the `redis-protocol` crate, an independent decoder.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::encode;
use super::reply::ReplyScanner;
use super::request::{RequestLimits, RequestScanner};

fn arg() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'$'), Just(b'*')],
            0..8
        ),
    ]
}

fn command() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(arg(), 1..6)
}

fn bulk_leaf() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..30).prop_map(|b| {
        let mut out = BytesMut::new();
        encode::bulk(&mut out, &b);
        out.to_vec()
    })
}

fn array(items: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = format!("*{}\r\n", items.len()).into_bytes();
    items.iter().for_each(|i| out.extend_from_slice(i));
    out
}

/// RESP2 replies as Redis sends them, nested a few levels.
fn resp2_reply() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        "[a-zA-Z0-9 ]{0,12}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
        "[a-zA-Z ]{0,12}".prop_map(|s| format!("-ERR {s}\r\n").into_bytes()),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        bulk_leaf(),
        Just(b"$-1\r\n".to_vec()),
        Just(b"*-1\r\n".to_vec()),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        proptest::collection::vec(inner, 0..6).prop_map(array)
    })
}

/// RESP3 replies as Redis sends them, nested a few levels.
fn resp3_reply() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        "[a-zA-Z0-9 ]{0,12}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
        "[a-zA-Z ]{0,12}".prop_map(|s| format!("-ERR {s}\r\n").into_bytes()),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        bulk_leaf(),
        Just(b"_\r\n".to_vec()),
        Just(b"#t\r\n".to_vec()),
        Just(b",3.25\r\n".to_vec()),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(array),
            // Map keys are strings, as Redis sends them (the oracle cannot hash aggregates).
            proptest::collection::vec((bulk_leaf(), inner), 0..4).prop_map(|pairs| {
                let mut out = format!("%{}\r\n", pairs.len()).into_bytes();
                for (k, v) in &pairs {
                    out.extend_from_slice(k);
                    out.extend_from_slice(v);
                }
                out
            }),
        ]
    })
}

/// Frame lengths our scanner finds in `wire` fed in two pieces cut at `cut`.
fn scanned_lengths(wire: &[u8], cut: usize) -> Vec<usize> {
    let mut scanner = ReplyScanner::new(16);
    let mut buf = Vec::new();
    let mut lens = Vec::new();
    for piece in [&wire[..cut], &wire[cut..]] {
        buf.extend_from_slice(piece);
        while let Some(frame) = scanner.scan(&buf).unwrap() {
            buf.drain(..frame.len);
            lens.push(frame.len);
        }
    }
    assert!(buf.is_empty());
    lens
}

/// Frame lengths the oracle finds, one `decode` call at a time.
fn oracle_lengths(wire: &[u8], decode: impl Fn(&Bytes) -> usize) -> Vec<usize> {
    let mut lens = Vec::new();
    let mut rest = Bytes::copy_from_slice(wire);
    while !rest.is_empty() {
        let len = decode(&rest);
        lens.push(len);
        rest = rest.slice(len..);
    }
    lens
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn requests_survive_any_split(commands in proptest::collection::vec(command(), 1..8),
                                  cut_seed in any::<u64>()) {
        let mut wire = BytesMut::new();
        for c in &commands {
            encode::command_into(&mut wire, c);
        }
        let wire = wire.freeze();
        // Cut the stream into pieces of pseudo-random sizes.
        let mut scanner = RequestScanner::new(RequestLimits::default());
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        let mut pos = 0;
        let mut seed = cut_seed | 1;
        while pos < wire.len() {
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            let step = 1 + (seed % 23) as usize;
            let end = (pos + step).min(wire.len());
            buf.extend_from_slice(&wire[pos..end]);
            pos = end;
            while let Some(request) = scanner.next(&mut buf, false).unwrap() {
                prop_assert_eq!(request.canonical.as_ref().map(|c| c.len()),
                                Some(encode::command(&request.args).len()));
                seen.push(request.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
            }
        }
        prop_assert_eq!(seen, commands);
        prop_assert!(buf.is_empty());
        prop_assert!(!scanner.in_progress());
    }

    #[test]
    fn resp2_boundaries_match_redis_protocol(replies in proptest::collection::vec(resp2_reply(), 1..6),
                                             cut in any::<prop::sample::Index>()) {
        let wire: Vec<u8> = replies.concat();
        let lens = scanned_lengths(&wire, cut.index(wire.len() + 1));
        let oracle = oracle_lengths(&wire, |b| {
            redis_protocol::resp2::decode::decode_bytes(b).unwrap().unwrap().1
        });
        prop_assert_eq!(lens, oracle);
    }

    #[test]
    fn resp3_boundaries_match_redis_protocol(replies in proptest::collection::vec(resp3_reply(), 1..6),
                                             cut in any::<prop::sample::Index>()) {
        let wire: Vec<u8> = replies.concat();
        let lens = scanned_lengths(&wire, cut.index(wire.len() + 1));
        let oracle = oracle_lengths(&wire, |b| {
            redis_protocol::resp3::decode::complete::decode_bytes(b).unwrap().unwrap().1
        });
        prop_assert_eq!(lens, oracle);
    }

    #[test]
    fn request_scanner_never_panics(input in proptest::collection::vec(any::<u8>(), 0..200),
                                    unauthenticated in any::<bool>()) {
        let mut scanner = RequestScanner::new(RequestLimits::default());
        let mut buf = BytesMut::from(&input[..]);
        let before = buf.len();
        let mut consumed_args = 0usize;
        while let Ok(Some(request)) = scanner.next(&mut buf, unauthenticated) {
            consumed_args += request.args.iter().map(|a| a.len()).sum::<usize>();
        }
        prop_assert!(buf.len() <= before);
        prop_assert!(consumed_args <= before);
    }

    #[test]
    fn reply_scanner_never_panics(input in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut scanner = ReplyScanner::new(8);
        if let Ok(Some(frame)) = scanner.scan(&input) {
            prop_assert!(frame.len <= input.len());
        }
    }
}

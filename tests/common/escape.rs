//! Showing bytes in failure messages: escaping CR/LF and non-printables, cutting long
//! buffers short, and a byte-equality assert that points at the first difference.
//!
//! Nothing here talks to a process; every other part of the harness uses these to say
//! what it got.

use std::fmt::Write as _;

/// Shows bytes with CR/LF/NUL and non-printables escaped.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 8);
    for &b in bytes {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            0 => s.push_str("\\0"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    s
}

/// Escaped, but cut to `max` bytes with a note.
pub fn escape_short(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        escape(bytes)
    } else {
        format!("{}… ({} bytes in all)", escape(&bytes[..max]), bytes.len())
    }
}

/// Asserts byte equality; on mismatch shows both sides escaped (around the first
/// difference when they are long).
#[track_caller]
pub fn assert_bytes_eq(what: &str, expected: &[u8], got: &[u8]) {
    if expected == got {
        return;
    }
    if expected.len() <= 2000 && got.len() <= 2000 {
        panic!(
            "{what}: bytes differ\n  expected: \"{}\"\n  got:      \"{}\"",
            escape(expected),
            escape(got)
        );
    }
    let first = expected
        .iter()
        .zip(got.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    let from = first.saturating_sub(200);
    let to_e = (first + 200).min(expected.len());
    let to_g = (first + 200).min(got.len());
    panic!(
        "{what}: bytes differ at offset {first} (expected {} bytes, got {} bytes)\n  expected[{from}..]: \"{}\"\n  got[{from}..]:      \"{}\"",
        expected.len(),
        got.len(),
        escape(&expected[from..to_e]),
        escape(&got[from.min(got.len())..to_g]),
    );
}

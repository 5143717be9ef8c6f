//! Integer parsing exactly as Redis's `string2ll` does it: optional `-`, no `+`, no leading
//! zeros, no spaces, no overflow. Redis uses it for `*N`/`$N` headers and for integer
//! arguments (SELECT, HELLO), so the proxy's accept/reject decisions match Redis's; and the
//! longest line either scanner accepts.

/// Redis's PROTO_INLINE_MAX_SIZE: the longest inline request, `*N` line or `$N` line.
pub const INLINE_MAX: usize = 64 * 1024;

/// Parses `s` the way Redis's `string2ll` does; `None` where Redis reports failure.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [] => return None,
        [b'0'] => return Some(0),
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    // Accumulate as a negative number so i64::MIN parses, as in Redis.
    let mut value: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_sub(i64::from(b - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

/// Redis's `getIntFromObject`: a `string2ll` that must also fit in a C `int`.
pub fn parse_i32(s: &[u8]) -> Option<i32> {
    parse_i64(s).and_then(|v| i32::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"15"), Some(15));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"abc",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"1\0",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
        assert_eq!(parse_i32(b"2147483647"), Some(i32::MAX));
        assert_eq!(parse_i32(b"2147483648"), None);
    }
}

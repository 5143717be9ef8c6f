//! Redis's `sdssplitargs`: splits an inline request line into arguments, with the same
//! quoting and escaping rules (double quotes with `\n \r \t \b \a \xHH` escapes, single
//! quotes with only `\'`, a closing quote must be followed by a space or the end).
//!
//! Like the C original it treats the line as a C string: a NUL byte ends the input.

/// The line had a quote that does not close properly.
#[derive(Debug, PartialEq, Eq)]
pub struct UnbalancedQuotes;

/// C's `isspace` in the "C" locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits `line` (without its line ending) into arguments exactly as Redis does.
pub fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, UnbalancedQuotes> {
    // Reading past the end, or at a NUL, yields 0: the C string's terminator.
    let at = |i: usize| -> u8 { line.get(i).copied().unwrap_or(0) };
    let mut args = Vec::new();
    let mut p = 0usize;
    loop {
        while at(p) != 0 && is_space(at(p)) {
            p += 1;
        }
        if at(p) == 0 {
            return Ok(args);
        }
        let mut current = Vec::new();
        let (mut in_double, mut in_single) = (false, false);
        loop {
            let c = at(p);
            if in_double {
                if c == b'\\' && at(p + 1) == b'x' {
                    if let (Some(hi), Some(lo)) = (hex_value(at(p + 2)), hex_value(at(p + 3))) {
                        current.push(hi * 16 + lo);
                        p += 4;
                        continue;
                    }
                }
                if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    current.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => b'\x08',
                        b'a' => b'\x07',
                        other => other,
                    });
                } else if c == b'"' {
                    // A closing quote must be followed by a space or nothing.
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return Err(UnbalancedQuotes);
                    }
                    p += 1;
                    break;
                } else if c == 0 {
                    return Err(UnbalancedQuotes);
                } else {
                    current.push(c);
                }
            } else if in_single {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    current.push(b'\'');
                } else if c == b'\'' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return Err(UnbalancedQuotes);
                    }
                    p += 1;
                    break;
                } else if c == 0 {
                    return Err(UnbalancedQuotes);
                } else {
                    current.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    other => current.push(other),
                }
            }
            p += 1;
        }
        args.push(current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &[u8]) -> Result<Vec<Vec<u8>>, UnbalancedQuotes> {
        split_args(s)
    }

    #[test]
    fn plain_words() {
        assert_eq!(
            split(b"set k v").unwrap(),
            vec![b"set".to_vec(), b"k".to_vec(), b"v".to_vec()]
        );
        assert_eq!(split(b"   ").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(split(b"").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(split(b"a\x0bb").unwrap(), vec![b"a\x0bb".to_vec()]);
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(split(br#"set k "a b""#).unwrap()[2], b"a b");
        assert_eq!(split(br#"echo "x\x4""#).unwrap()[1], b"xx4");
        assert_eq!(split(br#"ping "ax\xff""#).unwrap()[1], b"ax\xff");
        assert_eq!(
            split(br#"echo "\n\r\t\b\a\q""#).unwrap()[1],
            b"\n\r\t\x08\x07q"
        );
        assert_eq!(split(br"echo 'it\'s'").unwrap()[1], b"it's");
        assert_eq!(split(br"echo 'a\nb'").unwrap()[1], br"a\nb");
        assert_eq!(split(br#"echo a"b c""#).unwrap()[1], b"ab c");
        assert_eq!(split(br#"echo a"b"#), Err(UnbalancedQuotes));
    }

    #[test]
    fn unbalanced() {
        assert_eq!(split(br#"set """k""" v"#), Err(UnbalancedQuotes));
        assert_eq!(split(br#"ECHO "fo"o"#), Err(UnbalancedQuotes));
        assert_eq!(split(br#"ECHO "foo"#), Err(UnbalancedQuotes));
        assert_eq!(split(br"ECHO 'foo"), Err(UnbalancedQuotes));
        assert_eq!(split(b"ECHO \"fo\0o\""), Err(UnbalancedQuotes));
        assert_eq!(split(br#"ECHO "foo\"#), Err(UnbalancedQuotes));
    }

    #[test]
    fn nul_ends_the_line() {
        assert_eq!(split(b"ping\0 x").unwrap(), vec![b"ping".to_vec()]);
    }
}

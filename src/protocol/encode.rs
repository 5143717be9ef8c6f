//! Encoders for the RESP the proxy writes itself: commands sent upstream and the pieces of
//! replies answered locally. Everything appends to a caller's buffer; nothing allocates per
//! call beyond the buffer's own growth.

use bytes::{BufMut, Bytes, BytesMut};

use super::Proto;

/// Appends `args` as one canonical multibulk command.
pub fn command_into(out: &mut BytesMut, args: &[impl AsRef<[u8]>]) {
    array_header(out, args.len());
    for arg in args {
        bulk(out, arg.as_ref());
    }
}

/// `args` as one canonical multibulk command.
pub fn command(args: &[impl AsRef<[u8]>]) -> Bytes {
    let mut out = BytesMut::new();
    command_into(&mut out, args);
    out.freeze()
}

fn header(out: &mut BytesMut, kind: u8, n: i64) {
    let mut digits = itoa::Buffer::new();
    out.put_u8(kind);
    out.put_slice(digits.format(n).as_bytes());
    out.put_slice(b"\r\n");
}

pub fn array_header(out: &mut BytesMut, len: usize) {
    header(out, b'*', len as i64);
}

/// A map header: `%n` in RESP3, a flat array of `2n` elements in RESP2.
pub fn map_header(out: &mut BytesMut, pairs: usize, proto: Proto) {
    match proto {
        Proto::Resp3 => header(out, b'%', pairs as i64),
        Proto::Resp2 => header(out, b'*', 2 * pairs as i64),
    }
}

pub fn bulk(out: &mut BytesMut, data: &[u8]) {
    header(out, b'$', data.len() as i64);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

pub fn integer(out: &mut BytesMut, n: i64) {
    header(out, b':', n);
}

pub fn simple(out: &mut BytesMut, s: &[u8]) {
    out.put_u8(b'+');
    out.put_slice(s);
    out.put_slice(b"\r\n");
}

/// The null reply: `$-1` in RESP2, `_` in RESP3.
pub fn null(out: &mut BytesMut, proto: Proto) {
    match proto {
        Proto::Resp2 => out.put_slice(b"$-1\r\n"),
        Proto::Resp3 => out.put_slice(b"_\r\n"),
    }
}

/// An error reply. `text` must start with its code (`ERR …`, `NOAUTH …`); CR and LF in it
/// are mapped to spaces as Redis does, so user input cannot break the framing.
pub fn error(out: &mut BytesMut, text: &[u8]) {
    out.put_u8(b'-');
    out.extend(
        text.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        assert_eq!(
            &command(&[&b"SET"[..], b"k", b""])[..],
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
        );
        let mut out = BytesMut::new();
        map_header(&mut out, 7, Proto::Resp2);
        map_header(&mut out, 7, Proto::Resp3);
        null(&mut out, Proto::Resp2);
        null(&mut out, Proto::Resp3);
        integer(&mut out, -3);
        error(&mut out, b"ERR a\r\nb");
        assert_eq!(&out[..], b"*14\r\n%7\r\n$-1\r\n_\r\n:-3\r\n-ERR a  b\r\n");
    }
}

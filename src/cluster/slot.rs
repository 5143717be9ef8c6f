//! Redis Cluster's key → slot mapping: CRC16 (XMODEM) of the key, or of its hash tag — the
//! part between the first `{` and the next `}` when that part is not empty — modulo 16384.

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the variant Redis Cluster uses.
const fn crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC16: [u16; 256] = crc16_table();

pub fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16[usize::from(((crc >> 8) as u8) ^ b)]
    })
}

/// The part of `key` that is hashed: its hash tag if it has a non-empty one.
pub fn hashed_part(key: &[u8]) -> &[u8] {
    if let Some(open) = memchr::memchr(b'{', key) {
        if let Some(len) = memchr::memchr(b'}', &key[open + 1..]) {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The slot `key` belongs to.
pub fn slot(key: &[u8]) -> u16 {
    crc16(hashed_part(key)) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_check_value() {
        // The standard check value of CRC-16/XMODEM, also in Redis's cluster spec.
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn slots_as_redis_computes_them() {
        // From `CLUSTER KEYSLOT` on Redis 7.0.
        for (key, expected) in [
            (&b"foo"[..], 12182),
            (b"bar", 5061),
            (b"key", 12539),
            (b"", 0),
            (b"{user1000}.following", 3443),
            (b"{user1000}.followers", 3443),
            (b"user1000", 3443),
            (b"{{a}}", 10276),
            (b"a{}{b}", 15033),
            (b"123456789", 12739),
        ] {
            assert_eq!(slot(key), expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn hash_tags() {
        assert_eq!(hashed_part(b"{a}b"), b"a");
        assert_eq!(hashed_part(b"x{a}{b}"), b"a");
        // An empty tag means the whole key.
        assert_eq!(hashed_part(b"{}a"), b"{}a");
        assert_eq!(hashed_part(b"{a"), b"{a");
        assert_eq!(hashed_part(b"a}{"), b"a}{");
        // The first `{` and the first `}` after it.
        assert_eq!(hashed_part(b"{{a}}"), b"{a");
        assert_eq!(hashed_part(b"a{}{b}"), b"a{}{b}");
    }
}

#!/usr/bin/env python3
"""Writes the seed corpora fuzz/seeds/request_scanner/ and fuzz/seeds/reply_scanner/.

The inputs come from ../shared/REDIS-BEHAVIOUR.md's "Malformed input" list plus valid
pipelines, so the fuzzer starts from the shapes that broke other proxies. Run it from
anywhere; it rewrites both directories (the files are checked in, so this is only needed
after editing the lists below).
"""
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))


def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


TLS_CLIENT_HELLO = bytes.fromhex(
    "16030100c4010000c00303" + "00" * 32 + "00" + "0020" + "c02bc02fc02cc030cca9cca8c013c014"
    "009c009d002f0035000a01000077000000150013000010726564" "69732e6578616d706c652e636f6d"
)

REQUESTS = {
    # valid
    "ping_multibulk": cmd("PING"),
    "pipeline": cmd("SET", "k", "v") + cmd("GET", "k") + cmd("INCR", "n") + cmd("DEL", "k"),
    "handshake": cmd("HELLO", "3", "AUTH", "default", "pw", "SETNAME", "app")
    + cmd("CLIENT", "SETINFO", "LIB-NAME", "redis-py") + cmd("SELECT", "1"),
    "binary_arg": cmd("SET", b"k\x00\r\n", b"\r\n\x00\xff$*"),
    "empty_arg": cmd("SET", "k", ""),
    "inline": b"PING\r\nSET k \"a b\"\nECHO 'x y'\r\nGET k\r\n",
    "inline_escapes": b'SET k "\\x41\\n\\t\\"q\\""\r\nGET "x\\x4"\r\n',
    "ignored_frames": b"\r\n\n*0\r\n*-1\r\n   \r\n" + cmd("PING"),
    "lenient_headers": b"*1\rX$4\rYPING\r\n",
    "multi_exec": cmd("MULTI") + cmd("INCR", "a") + cmd("EXEC"),
    # malformed, from REDIS-BEHAVIOUR.md
    "count_3e9": b"*3000000000\r\n",
    "count_i32_max": b"*2147483647\r\n",
    "count_2e9": b"*2000000000\r\n$3\r\nGET\r\n",
    "nested_headers_1000": b"*1\r\n" * 1000,
    "bulk_minus_zero": b"*1\r\n$-0\r\n",
    "bulk_minus_zero_bare": b"$-0",
    "no_trailing_crlf": b"*1\r\n$4\r\nPING",
    "cr_only": b"*1\r$4\rPING\r",
    "lf_only": b"*1\n$4\nPING\n",
    "cr_only_inline": b"PING\rPING\r",
    "nul_in_name": cmd(b"GE\x00T", "k") + b"PI\x00NG\r\n",
    "nul_in_args": cmd("SET", b"\x00", b"\x00\x00"),
    "long_line_70k": b"A" * (70 * 1024),
    "tls_client_hello": TLS_CLIENT_HELLO,
    "http_request": b"GET / HTTP/1.1\r\nHost: localhost:6379\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n",
    "resp3_map_as_request": b"%1\r\n$1\r\na\r\n$1\r\nb\r\n",
    "resp3_set_as_request": b"~2\r\n$1\r\na\r\n$1\r\nb\r\n",
    "resp3_push_as_request": b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n",
    "unbalanced_quotes": b'SET """k""" v\r\nPING\r\n',
    "expected_dollar": b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n",
    "bulk_bad_terminator": b"*1\r\n$4\r\nPINGXY",
    "unauth_args_11": b"*11\r\n" + b"$1\r\na\r\n" * 11,
    "unauth_bulk_16385": b"*1\r\n$16385\r\n",
}

REPLIES = {
    # RESP2
    "resp2_simple": b"+OK\r\n-ERR x\r\n:1\r\n:-42\r\n",
    "resp2_bulk_null": b"$-1\r\n$3\r\nabc\r\n$0\r\n\r\n*-1\r\n*0\r\n",
    "resp2_nested": b"*2\r\n*1\r\n:1\r\n$0\r\n\r\n*3\r\n+a\r\n-b\r\n$-1\r\n",
    "resp2_binary_bulk": b"$6\r\n\x00\r\n\r\n\xff\r\n",
    "resp2_exec": b"*3\r\n+OK\r\n:2\r\n-WRONGTYPE Operation\r\n",
    # RESP3
    "resp3_map": b"%2\r\n+a\r\n:1\r\n+b\r\n*2\r\n_\r\n,1.5\r\n",
    "resp3_hello": b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.4\r\n"
    b"$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n"
    b"$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n",
    "resp3_attribute": b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n*2\r\n|1\r\n+k\r\n+v\r\n:1\r\n#t\r\n",
    "resp3_misc": b"~1\r\n(123\r\n=7\r\ntxt:abc\r\n!3\r\nbad\r\n#f\r\n,inf\r\n,-1.5e3\r\n",
    "resp3_push": b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n+OK\r\n",
    "resp3_set": b"~3\r\n:1\r\n:2\r\n$1\r\nx\r\n",
    # malformed / hostile
    "deep_1000": b"*1\r\n" * 1000 + b":1\r\n",
    "huge_count": b"*2147483647\r\n",
    "huge_bulk": b"$2147483647\r\nabc",
    "bulk_minus_zero": b"$-0\r\n",
    "bulk_minus_two": b"$-2\r\n",
    "bulk_plus": b"$+3\r\nabc\r\n",
    "bad_terminator": b"$1\r\nabc\r\n",
    "bare_cr": b"+OK\rX\r\n",
    "lf_only": b"+OK\n:1\n",
    "unknown_type": b"?x\r\n",
    "streamed": b"$?\r\n;4\r\nabcd\r\n;0\r\n*?\r\n:1\r\n.\r\n",
    "long_line_70k": b"+" + b"A" * (70 * 1024) + b"\r\n",
    "no_crlf": b"*2\r\n$4\r\nPING",
    "nul_bytes": b"+\x00\r\n$1\r\n\x00\r\n",
    "tls_client_hello": TLS_CLIENT_HELLO,
    "http_response": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
}


def write(target, seeds):
    d = os.path.join(HERE, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


write("request_scanner", REQUESTS)
write("reply_scanner", REPLIES)
print(f"{len(REQUESTS)} request seeds, {len(REPLIES)} reply seeds")

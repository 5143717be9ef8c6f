#!/usr/bin/env python3
"""Writes the seed corpora fuzz/seeds/request_scanner/, fuzz/seeds/reply_scanner/ and
fuzz/seeds/session/.

The inputs come from ../shared/REDIS-BEHAVIOUR.md's "Malformed input" list plus valid
pipelines, so the fuzzer starts from the shapes that broke other proxies. Run it from
anywhere; it rewrites the three directories (the files are checked in, so this is only needed
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


# The session target's inputs are operations, not bytes on the wire: see
# fuzz/src/session/input.rs. The first byte holds the settings, each operation is one byte
# (kind | INLINE | LOWER) followed by its arguments (dictionary indexes below 0x80).
AUTH, EARLY, TRAILING, SMALL = 1, 2, 4, 8
INLINE, LOWER = 0x80, 0x40
(PING, PING_MSG, ECHO, SELECT, AUTH1, AUTH2, HELLO, HELLO_V, HELLO_AUTH, HELLO_SETNAME, SETNAME,
 GETNAME, CLIENT_ID_INFO, CLIENT_SUB, MULTI, EXEC, DISCARD, WATCH, UNWATCH, RESET, QUIT, DATA,
 DATA2, BLOCKING, RELAY, MISC, RAW, CUT, CUT_WAIT, CORRUPT, REPEAT, BIG) = range(32)
# Dictionary indexes (input.rs: STRINGS, NUMBERS, VERSIONS, USERS, PASSWORDS, NAMES, and the
# DATA, BLOCKING, RELAY, CLIENT_SUBS, MISC tables).
S_EMPTY, S_A, S_HELLO, S_XY, S_CRLF, S_K = range(6)
N_0, N_1, N_15, N_16, N_M1, N_ABC, N_2E31, N_00, N_PLUS1 = range(9)
V_2, V_3, V_1, V_4, V_X = range(5)
U_DEFAULT, U_APP, U_NOBODY = range(3)
P_PW, P_APPPW, P_WRONG = range(3)
NAME_X, NAME_APP, NAME_EMPTY, NAME_SPACE = range(4)
D_GET, D_SET, D_INCR, D_DEL, D_MGET = range(5)
D_CONFIG = 9
B_BLPOP, B_BRPOP, B_XREAD_BLOCK, B_XREAD = range(4)
R_SUBSCRIBE, R_SUBSCRIBE2, R_PSUBSCRIBE, R_UNSUBSCRIBE = range(4)
R_SSUBSCRIBE, R_SUNSUBSCRIBE, R_MONITOR = 6, 7, 8
C_NO_EVICT, C_TRACKING_ON, C_TRACKING_OFF, C_REDIRECT, C_REPLY_ON, C_REPLY_OFF, C_REPLY_SKIP = (
    0, 2, 3, 4, 5, 6, 7)
C_BOGUS, C_SETINFO = 9, 13
M_SYNC, M_POST, M_HOST, M_STAR0, M_EMPTY_NAME, M_PING_ARITY, M_ECHO_ARITY = 0, 2, 3, 4, 8, 10, 11
M_EXEC_ARITY, M_WATCH_ARITY, M_ECHO_NULL, M_UNBALANCED, M_UNAUTH_ARGS, M_UNAUTH_BULK = (
    13, 16, 23, 25, 27, 28)


def session(settings, *ops):
    out = bytes([settings])
    for op in ops:
        out += bytes(op) if isinstance(op, (list, tuple)) else bytes([op])
    return out


def raw(data):
    return [RAW, len(data)] + list(data)


SESSIONS = {
    "basic": session(0, PING, [ECHO, S_HELLO], [SELECT, N_1], [DATA, D_GET], MULTI,
                     [SETNAME, NAME_X], [DATA, D_GET], EXEC, GETNAME),
    "auth_flow": session(AUTH, PING, [DATA, D_GET], [AUTH1, P_WRONG], [AUTH1, P_PW], PING,
                         [SETNAME, NAME_APP], GETNAME, RESET, PING, [AUTH2, U_APP, P_APPPW],
                         [DATA, D_SET], [CLIENT_ID_INFO, 1]),
    "nopass_auth": session(0, [AUTH1, P_PW], [AUTH2, U_DEFAULT, P_WRONG], [AUTH2, U_APP, P_PW],
                           [DATA, D_GET]),
    "hello3": session(0, [HELLO_V, V_3], GETNAME, [DATA, D_GET], [CLIENT_ID_INFO, 1],
                      [CLIENT_ID_INFO, 0], [HELLO_V, V_2], [DATA, D_GET],
                      [HELLO_SETNAME, V_3, NAME_APP], GETNAME, HELLO, [HELLO_V, V_4],
                      [HELLO_V, V_X]),
    "hello_auth": session(AUTH, [HELLO_V, V_3], [HELLO_AUTH, V_3, U_APP, P_APPPW],
                          [DATA, D_GET], [HELLO_AUTH, V_2, U_DEFAULT, P_WRONG], [DATA, D_INCR]),
    "select_states": session(0, [SELECT, N_15], [DATA, D_GET], [SELECT, N_16], [SELECT, N_M1],
                             [SELECT, N_ABC], [SELECT, N_00], [SELECT, N_PLUS1],
                             [SELECT, N_2E31], [DATA, D_GET], [SELECT, N_0], [DATA, D_GET]),
    "multi_locals": session(0, MULTI, [SELECT, N_15], [HELLO_V, V_3], GETNAME,
                            [SETNAME, NAME_X], [DATA, D_GET], PING, [ECHO, S_A], EXEC,
                            [DATA, D_GET], GETNAME),
    "multi_abort": session(0, MULTI, [CLIENT_SUB, C_NO_EVICT], [DATA, D_GET], EXEC, MULTI,
                           [MISC, M_ECHO_ARITY], EXEC, DISCARD, MULTI, [DATA, D_SET], DISCARD,
                           [DATA, D_GET]),
    "watch": session(0, [WATCH, S_K], [DATA, D_GET], UNWATCH, [WATCH, S_K], MULTI,
                     [DATA, D_GET], EXEC, RESET, [WATCH, S_K], MULTI, RESET, [DATA, D_GET],
                     UNWATCH),
    "pipelined_cuts": session(0, [DATA, D_SET], CUT, [DATA, D_GET], CUT_WAIT, [SELECT, N_1],
                              [DATA, D_GET], CUT, MULTI, CUT_WAIT, [DATA, D_INCR], EXEC),
    "quit_middle": session(0, PING, QUIT, PING),
    "quit_trailing": session(TRAILING, PING, [DATA, D_GET], QUIT, PING, [DATA, D_GET]),
    "quit_in_multi": session(0, MULTI, [DATA, D_GET], QUIT),
    "http_probe": session(0, PING, [MISC, M_POST], PING),
    "http_host": session(TRAILING, [DATA, D_GET], [MISC, M_HOST]),
    "protocol_error": session(0, PING, [DATA, D_GET], [MISC, M_UNBALANCED], PING),
    "protocol_error_trailing": session(TRAILING, PING, [DATA, D_GET], [MISC, M_UNBALANCED],
                                       PING),
    "expected_dollar": session(0, PING, raw(b"*1\r\nfoo\r\n")),
    "null_bulk": session(0, [MISC, M_ECHO_NULL], PING),
    "inline": session(0, INLINE | DATA, D_SET, INLINE | ECHO, S_XY, INLINE | SETNAME, NAME_X,
                      INLINE | LOWER | GETNAME, INLINE | PING_MSG, S_CRLF),
    "ignored_frames": session(0, [MISC, M_STAR0], PING, [MISC, M_EMPTY_NAME], PING),
    "blocking": session(0, [BLOCKING, B_BLPOP], [DATA, D_GET], [BLOCKING, B_XREAD_BLOCK],
                        [BLOCKING, B_XREAD], PING),
    "blocking_early": session(EARLY, [BLOCKING, B_BLPOP], [DATA, D_GET], PING),
    "relay_subscribe": session(0, PING, [RELAY, R_SUBSCRIBE], PING, [RELAY, R_UNSUBSCRIBE],
                               [DATA, D_GET]),
    "relay_resp3": session(0, [HELLO_V, V_3], [RELAY, R_SUBSCRIBE2], [DATA, D_GET],
                           [SETNAME, NAME_X], [RELAY, R_UNSUBSCRIBE], GETNAME),
    "relay_shard": session(0, [RELAY, R_SSUBSCRIBE], [SELECT, N_1], [RELAY, R_SUNSUBSCRIBE],
                           [DATA, D_GET]),
    "relay_monitor": session(0, [RELAY, R_MONITOR], PING, RESET, [DATA, D_GET]),
    "relay_reply_off": session(0, [CLIENT_SUB, C_REPLY_OFF], [DATA, D_GET], [SELECT, N_1],
                               [CLIENT_SUB, C_REPLY_ON], [DATA, D_GET]),
    "relay_reply_skip": session(0, [CLIENT_SUB, C_REPLY_SKIP], [DATA, D_GET], [DATA, D_INCR]),
    "tracking": session(0, [CLIENT_SUB, C_TRACKING_ON], [DATA, D_GET],
                        [CLIENT_SUB, C_TRACKING_OFF], [CLIENT_SUB, C_REDIRECT], PING),
    "relay_quit": session(0, [RELAY, R_PSUBSCRIBE], PING, QUIT),
    "refused": session(0, [MISC, M_SYNC], [CLIENT_SUB, C_NO_EVICT], [CLIENT_SUB, C_BOGUS],
                       [CLIENT_SUB, C_SETINFO], [MISC, M_PING_ARITY], [MISC, M_EXEC_ARITY]),
    "unauth_caps": session(AUTH, PING, [MISC, M_UNAUTH_ARGS]),
    "unauth_bulk": session(AUTH, [AUTH1, P_PW], [BIG, 220], [MISC, M_UNAUTH_BULK]),
    "big_value": session(0, [BIG, 255], [DATA, D_GET], [BIG, 3], CUT_WAIT, [BIG, 100]),
    "corrupt": session(0, PING, [CORRUPT, D_SET, 1, ord("x")], PING),
    "repeat": session(0, PING, [REPEAT, 7], [DATA, D_INCR], [REPEAT, 7], CUT_WAIT, GETNAME),
    "raw_mixed": session(0, raw(b"PING\r\n*2\r\n$4\r\nECHO\r\n$1\r\nx\r\n\r\n"),
                         [DATA, D_MGET], raw(b"GET k\n")),
    "config_forwarded": session(0, [DATA, D_CONFIG], [SELECT, N_15], [DATA, D_CONFIG]),
    "small_batches": session(SMALL, PING, [DATA, D_SET], [SELECT, N_1], [DATA, D_GET], MULTI,
                             [SETNAME, NAME_X], [DATA, D_INCR], [SELECT, N_15], EXEC,
                             [DATA, D_GET], GETNAME, [HELLO_V, V_3], [DATA, D_GET], [REPEAT, 5]),
    "small_batches_auth": session(SMALL | AUTH, [DATA, D_GET], [AUTH1, P_PW], [DATA, D_GET],
                                  [DATA, D_SET], RESET, [DATA, D_GET], [MISC, M_UNAUTH_ARGS]),
    # The proxy bugs this target found (fuzz/README.md, "Findings"). They pass as they are,
    # because the harness steps around them; SESSION_FUZZ_STRICT=1 makes them fail until
    # the bugs are fixed.
    "known_bug1_nested_multi": session(0, MULTI, MULTI, [SETNAME, NAME_X], EXEC, GETNAME),
    "known_bug1_watch_select": session(0, MULTI, [WATCH, S_K], [SELECT, N_1], EXEC,
                                       [DATA, D_GET]),
    "known_bug2_blocking_split": session(0, [BLOCKING, B_BLPOP], INLINE | LOWER | BIG, 10),
    "known_bug3_skip_multi": session(0, [CLIENT_SUB, C_REPLY_SKIP], MULTI, [HELLO_V, V_2]),
    "known_bug3_tracking_multi": session(0, [CLIENT_SUB, C_TRACKING_ON], MULTI,
                                         [SETNAME, NAME_X], EXEC),
    "known_bug4_skip_protocol_error": session(0, [CLIENT_SUB, C_REPLY_SKIP],
                                              [MISC, M_UNBALANCED]),
    "known_bug5_skip_reset": session(0, [CLIENT_SUB, C_REPLY_SKIP], RESET, PING),
    "known_bug6_off_subscribe_on": session(0, [CLIENT_SUB, C_REPLY_OFF], [RELAY, R_SUBSCRIBE],
                                           [CLIENT_SUB, C_REPLY_ON], PING),
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
write("session", SESSIONS)
print(f"{len(REQUESTS)} request seeds, {len(REPLIES)} reply seeds, {len(SESSIONS)} session seeds")

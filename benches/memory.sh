#!/usr/bin/env bash
# Memory of redis-ambassador (issue 6, item 4): its resident set size (VmRSS in
# /proc/PID/status) at start, with 10 000 idle client connections, and under a 1 000-client
# pipelined load; optionally a soak of mixed load while the upstream Redis is restarted.
#
#   benches/memory.sh                 quick mode (the default): start, idle clients, load (< 2 min)
#   benches/memory.sh --soak MINUTES  then a soak of MINUTES (1-120; 10 for the issue's figure)
#
# Idle: a small Python script (plain sockets) opens up to 10 000 connections to the ambassador,
# one at a time, each sending PING and reading +PONG (a real session), and keeps them open
# (bounded: at most 10 000, within 60 s); RSS with them open and after they close, then a second
# round the same (memory kept for reuse stays level, a leak grows by as much again). Load, on a
# freshly started ambassador: redis-benchmark -c 1000 -P 16 -t get,set, with -n calibrated on a
# short run so that it takes ~15 s, killed after 25 s at most; RSS sampled every 0.5 s. Soak
# (on the same ambassador): redis-benchmark (-c 50 -t get,set,incr,lpush -r 100000) in a loop of
# bounded runs (redis-benchmark 7 exits at the first error reply: such a run counts as one error,
# with its text, and the next run starts at once), plus a Python probe doing SET/GET of a fresh value in a loop (it counts -ERR
# replies, nil and wrong values, and connection errors); the upstream redis-server gets SIGTERM
# every 2 minutes and is started again on the same port. Every 30 s a row: RSS, open fds
# (/proc/PID/fd), client connections and the error counts; then start and end figures.
#
# On Debian it installs redis-server and redis-tools when they are missing (as root, or through
# sudo), and builds the ambassador (cargo build --release). It raises its own open-file limit
# (ulimit -n 65536, or the hard limit if that is lower; it needs 11 000). The ambassador runs
# with config.toml's keys, these changed: listen/upstream/metrics addresses (free ports on
# 127.0.0.1), the upstream password file, [listen] max_clients = 11000, [shutdown]
# drain_delay_ms = 0. All traffic stays on 127.0.0.1. Everything it starts is stopped, and its
# temporary directory removed, on exit. The generated Redis password lives in 0600 files and is
# never printed or put on a command line.
set -euo pipefail

usage() {
    sed -n '2,29s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

soak_minutes=0
while [ "$#" -gt 0 ]; do
    case "$1" in
        --soak)
            [ "$#" -ge 2 ] || { usage >&2; exit 2; }
            soak_minutes=$2
            shift
            ;;
        --soak=*) soak_minutes=${1#--soak=} ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
    shift
done
if ! [[ "$soak_minutes" =~ ^[0-9]+$ ]] || [ "$soak_minutes" -gt 120 ]; then
    echo "error: --soak takes a number of minutes, 1 to 120" >&2
    exit 2
fi
soak_minutes=$((10#$soak_minutes))

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo_root=$(pwd)
bench_name=memory
# shellcheck source-path=SCRIPTDIR/.. source=scripts/common.sh disable=SC1091  # followed with shellcheck -x
. scripts/common.sh

# --- parameters ----------------------------------------------------------------------------

idle_clients=10000        # idle connections to open (at most)
idle_deadline=60          # seconds allowed to open them
max_clients=11000         # [listen] max_clients for this run (config.toml: 10000)
fd_limit_wanted=65536     # ulimit -n for this script and what it starts
fd_limit_needed=11000     # the ambassador holds ~10 000 client sockets at once
load_clients=1000
load_pipeline=16
load_tests=get,set
load_target_secs=15       # -n is calibrated so that the load takes about this long
load_timeout=25           # and is killed after this long at most
soak_clients=50
soak_tests=get,set,incr,lpush
soak_run_n=200000         # requests per test per soak run (each run bounded below)
soak_run_timeout=120
sample_every=30           # soak: seconds between rows
restart_every=120         # soak: seconds between upstream restarts
keyspace=100000           # redis-benchmark -r
free_port_span=12000      # free ports from 20000 to 31999, below the ephemeral range (32768-)

# --- helpers -------------------------------------------------------------------------------

# Install whichever of redis-server and redis-tools (redis-cli, redis-benchmark) is missing.
# shellcheck disable=SC2119  # no packages of its own
ensure_tools() {
    command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) not found"
    command -v python3 >/dev/null 2>&1 || die "python3 not found (the idle clients and the soak probe need it)"
    install_bench_packages
}

# The ambassador's VmRSS / VmHWM in KiB.
rss_kib() {
    awk '/^VmRSS:/ { print $2; exit }' "/proc/$amb_pid/status"
}
hwm_kib() {
    awk '/^VmHWM:/ { print $2; exit }' "/proc/$amb_pid/status"
}
# The ambassador's open file descriptors.
fd_count() {
    local fds=("/proc/$amb_pid/fd/"*)
    echo "${#fds[@]}"
}
# KiB -> "12.3 MiB".
mib() {
    awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'
}

# Die when the ambassador has exited.
check_ambassador() {
    kill -0 "$amb_pid" 2>/dev/null && return 0
    show_log redis-ambassador "$tmp/ambassador.log"
    die "redis-ambassador (pid $amb_pid) has exited"
}

# The ambassador's /metrics: print "client_connections errors_total" (errors_total summed
# over its classes), or "? ?" when it does not answer.
amb_metrics() {
    python3 - "$metrics_port" <<'PY' 2>/dev/null || echo "? ?"
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
clients, errors = "?", 0
for line in text.splitlines():
    if line.startswith("redis_ambassador_client_connections "):
        clients = str(int(float(line.split()[-1])))
    elif line.startswith("redis_ambassador_errors_total{"):
        errors += int(float(line.split()[-1]))
print(clients, errors)
PY
}

# The ambassador's error replies by class, one "class=count" per line.
amb_error_classes() {
    python3 - "$metrics_port" <<'PY' 2>/dev/null || true
import re, sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
for line in text.splitlines():
    m = re.match(r'redis_ambassador_errors_total\{class="([^"]*)"\} (\S+)', line)
    if m and float(m.group(2)) > 0:
        print(f"{m.group(1)}={int(float(m.group(2)))}")
PY
}

# --- clean-up ------------------------------------------------------------------------------

tmp=""
redis_pid=""
amb_pid=""
idle_pid=""
bench_pid=""
sampler_pid=""
loop_pid=""
probe_pid=""

cleanup_pid_vars=(loop_pid bench_pid sampler_pid probe_pid idle_pid amb_pid redis_pid)
trap_bench_cleanup

# --- prerequisites, limits and build -------------------------------------------------------

ensure_tools
ensure_cargo

# Open files: the ambassador holds one socket per client, the idle-client script as many.
if ! ulimit -n "$fd_limit_wanted" 2>/dev/null; then
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$fd_limit_wanted" ]; then
        ulimit -n "$hard" 2>/dev/null || true
    fi
fi
fd_limit=$(ulimit -n)
if [ "$fd_limit" != unlimited ] && [ "$fd_limit" -lt "$fd_limit_needed" ]; then
    die "ulimit -n is $fd_limit (hard limit $(ulimit -Hn)); this needs at least $fd_limit_needed: raise the hard limit (e.g. docker run --ulimit nofile=65536:65536)"
fi

build_ambassador
make_bench_tmp

# --- the Python helpers --------------------------------------------------------------------

# Idle clients: open up to COUNT connections, one after the other, each sending PING and
# reading +PONG; write "opened failed first_error" to STATUS; keep them open until SIGTERM
# (or HOLD seconds, a bound of its own).
cat >"$tmp/idle_clients.py" <<'PY'
import os, resource, signal, socket, sys, time

port, count, deadline_s, status, hold_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], float(sys.argv[5])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = count + 64
if soft != resource.RLIM_INFINITY and soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))

stop = False
def on_term(signum, frame):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)

socks, failed, first_error = [], 0, ""
deadline = time.monotonic() + deadline_s
while len(socks) < count and time.monotonic() < deadline and failed < 100 and not stop:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(64)
            if not chunk:
                break
            reply += chunk
        if reply != b"+PONG\r\n":
            raise OSError("reply %r" % reply[:60])
        socks.append(s)
    except OSError as e:
        failed += 1
        first_error = first_error or str(e).replace(" ", "_")
        try:
            s.close()
        except Exception:
            pass

with open(status + ".tmp", "w") as f:
    f.write(f"{len(socks)} {failed} {first_error or '-'}\n")
os.rename(status + ".tmp", status)

end = time.monotonic() + hold_s
while not stop and time.monotonic() < end:
    time.sleep(0.2)
for s in socks:
    s.close()
PY

# Soak probe: SET memory:soak:probe <fresh value>, then GET it, in a loop (about 1 000 pairs a
# second at most), over one connection that is opened again after any connection error.
# Every second it rewrites STATUS with its cumulative counts:
#   pairs ok err_replies conn_errors nil wrong
# and, at the end, the error texts it saw with their counts (STATUS.errors).
cat >"$tmp/soak_probe.py" <<'PY'
import os, signal, socket, sys, time

port, status, bound_s = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
stop = False
def on_term(signum, frame):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)

class Conn:
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=2)
        self.s.settimeout(15)
        self.buf = b""
    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the ambassador")
            self.buf += chunk
        i = self.buf.index(b"\r\n")
        out, self.buf = self.buf[:i], self.buf[i + 2:]
        return out
    def exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the ambassador")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n + 2:]
        return out
    def cmd(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)
    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

c = dict(pairs=0, ok=0, err=0, conn=0, nil=0, wrong=0)
texts = {}
def note(text):
    texts[text] = texts.get(text, 0) + 1

def write_status():
    with open(status + ".tmp", "w") as f:
        f.write("%(pairs)d %(ok)d %(err)d %(conn)d %(nil)d %(wrong)d\n" % c)
    os.rename(status + ".tmp", status)
    with open(status + ".errors.tmp", "w") as f:
        for t, n in sorted(texts.items(), key=lambda kv: -kv[1]):
            f.write(f"{n}\t{t}\n")
    os.rename(status + ".errors.tmp", status + ".errors")

key = b"memory:soak:probe"
end = time.monotonic() + bound_s
next_status = 0.0
conn = None
i = 0
while not stop and time.monotonic() < end:
    now = time.monotonic()
    if now >= next_status:
        write_status()
        next_status = now + 1
    try:
        if conn is None:
            conn = Conn()
        i += 1
        value = b"v%d" % i
        c["pairs"] += 1
        conn.cmd(b"SET", key, value)
        r = conn.line()
        set_ok = r == b"+OK"
        if not set_ok:
            c["err"] += 1
            note("SET: " + r.decode(errors="replace")[:100])
        conn.cmd(b"GET", key)
        r = conn.line()
        if r.startswith(b"-"):
            c["err"] += 1
            note("GET: " + r.decode(errors="replace")[:100])
        elif r == b"$-1":
            c["nil"] += 1
        elif r.startswith(b"$"):
            got = conn.exact(int(r[1:]))
            if got == value and set_ok:
                c["ok"] += 1
            elif got != value:
                c["wrong"] += 1
                note("GET: wrong value (%r, expected %r)" % (got[:40], value))
        else:
            c["wrong"] += 1
            note("GET: unexpected reply %r" % r[:60])
    except (OSError, ValueError) as e:
        c["conn"] += 1
        note("connection: " + (str(e) or type(e).__name__)[:100])
        if conn is not None:
            conn.close()
        conn = None
        time.sleep(0.1)
        continue
    time.sleep(0.001)
write_status()
if conn is not None:
    conn.close()
PY

# --- a password-protected Redis ------------------------------------------------------------

step "Starting redis-server and redis-ambassador on 127.0.0.1"
make_redis_password

redis_port=$(free_port 6379)
# shellcheck disable=SC2119  # no extra arguments
start_redis
echo "redis-server      127.0.0.1:$redis_port (pid $redis_pid), password in a 0600 file"

# --- the ambassador, with a config derived from the repo's config.toml ----------------------

amb_port=$(free_port 6379 "$redis_port")
metrics_port=$(free_port 6379 "$redis_port" "$amb_port")
config="$tmp/ambassador.toml"
# config.toml with listen/upstream/metrics addresses, the password file, [listen] max_clients
# = $max_clients (room for the 10 000 idle clients and the probes), [shutdown] drain_delay_ms =
# 0 (so that clean-up is quick).
derive_config "$config" "127.0.0.1:$amb_port" "127.0.0.1:$redis_port" "127.0.0.1:$metrics_port" "" "$max_clients"

start_ambassador amb_pid "$config" "$amb_port" "$tmp/ambassador.log"
echo "redis-ambassador  127.0.0.1:$amb_port (pid $amb_pid), metrics 127.0.0.1:$metrics_port, max_clients = $max_clients, no client password"

git_rev=$(ambassador_git_rev)
echo "machine           $(nproc) CPUs, $(cpu_model_name), $(uname -sr)"
echo "versions          redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), rustc $(rustc --version 2>/dev/null | awk '{ print $2 }'), ambassador git $git_rev"
echo "open-file limit   ulimit -n $fd_limit (hard $(ulimit -Hn)) for this script and what it starts"

# --- 1. at start ---------------------------------------------------------------------------

step "1. At start"
sleep 2
check_ambassador
rss_start=$(rss_kib)
fds_start=$(fd_count)
echo "VmRSS $(mib "$rss_start"), $fds_start fds, no clients"

# --- 2. 10 000 idle clients ----------------------------------------------------------------

step "2. $idle_clients idle clients (each sends PING, then stays open), two rounds"
# One round: open the idle clients, measure with them open, close them, measure again. Sets
# idle_opened, rss_idle, fds_idle, rss_idle_after. The second round tells memory the allocator
# kept for reuse (RSS stays level) from memory that leaked (RSS grows by as much again).
idle_round() {
    local round=$1 status="$tmp/idle.status.$1" opened_at=$SECONDS failed error gauge
    python3 "$tmp/idle_clients.py" "$amb_port" "$idle_clients" "$idle_deadline" "$status" \
        $((idle_deadline + 60)) </dev/null >"$tmp/idle.log" 2>&1 &
    idle_pid=$!
    for _ in $(seq 1 $(((idle_deadline + 10) * 10))); do
        [ -s "$status" ] && break
        kill -0 "$idle_pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -s "$status" ] || { show_log idle-clients "$tmp/idle.log"; die "the idle-client script did not report"; }
    read -r idle_opened failed error <"$status"
    echo "round $round: opened $idle_opened connections in $((SECONDS - opened_at)) s ($failed failed${error:+, first error: ${error//_/ }})"
    sleep 3   # let the sessions settle
    check_ambassador
    rss_idle=$(rss_kib)
    fds_idle=$(fd_count)
    read -r gauge _ < <(amb_metrics)
    echo "round $round: VmRSS $(mib "$rss_idle") with them open, $fds_idle fds, client_connections gauge $gauge"
    stop_pid "$idle_pid"
    idle_pid=""
    sleep 2
    rss_idle_after=$(rss_kib)
    read -r gauge _ < <(amb_metrics)
    echo "round $round: VmRSS $(mib "$rss_idle_after") after they closed, $(fd_count) fds, client_connections gauge $gauge"
}
idle_round 1
idle1_opened=$idle_opened rss_idle1=$rss_idle fds_idle1=$fds_idle rss_idle1_after=$rss_idle_after
idle_round 2
idle2_opened=$idle_opened rss_idle2=$rss_idle rss_idle2_after=$rss_idle_after
per_client=$(awk -v a="$rss_idle1" -v b="$rss_start" -v n="$idle1_opened" \
    'BEGIN { if (n > 0) printf "%.1f KiB", (a - b) / n; else print "-" }')
echo "round 1 over the start: +$(mib $((rss_idle1 - rss_start))), $per_client per client"

# --- 3. 1 000-client pipelined load --------------------------------------------------------

step "3. $load_clients clients, pipeline $load_pipeline, redis-benchmark -t $load_tests"
# A fresh ambassador (same config and ports), so that this figure and the soak's do not carry
# what the allocator kept from the idle clients.
stop_pid "$amb_pid"
amb_pid=""
start_ambassador amb_pid "$config" "$amb_port" "$tmp/ambassador.log"
sleep 2
rss_fresh=$(rss_kib)
echo "ambassador restarted (pid $amb_pid): VmRSS $(mib "$rss_fresh"), $(fd_count) fds"
samples="$tmp/load.samples"
: >"$samples"
(
    while kill -0 "$amb_pid" 2>/dev/null; do
        awk '/^VmRSS:/ { print $2; exit }' "/proc/$amb_pid/status" >>"$samples" 2>/dev/null || true
        sleep 0.5
    done
) &
sampler_pid=$!
load_start=$SECONDS
# Calibration: a short SET run gives the rate; -n is chosen so that GET and SET together take
# about $load_target_secs s.
cal_n=400000
timeout -k 5 10 redis-benchmark -h 127.0.0.1 -p "$amb_port" -c "$load_clients" -P "$load_pipeline" \
    -n "$cal_n" -r "$keyspace" -t set --csv </dev/null >"$tmp/cal.csv" 2>"$tmp/cal.err" &
bench_pid=$!
rc=0
wait "$bench_pid" || rc=$?
bench_pid=""
cal_rps=$(sed -n '2{s/\r$//;p;}' "$tmp/cal.csv" | awk -F, '{ gsub(/"/, ""); print $2 }')
if [ "$rc" -ne 0 ] || ! [[ "$cal_rps" =~ ^[0-9.]+$ ]]; then
    tail -n 3 "$tmp/cal.err" >&2 || true
    check_ambassador
    die "the calibration run failed (exit status $rc)"
fi
load_n=$(awk -v r="$cal_rps" -v s="$load_target_secs" \
    'BEGIN { n = int(r * s / 2 / 10000 + 0.5) * 10000; if (n < 100000) n = 100000; if (n > 20000000) n = 20000000; print n }')
echo "calibration: SET at $(printf '%.0f' "$cal_rps") req/s -> -n $load_n per test"
rc=0
timeout -k 5 "$load_timeout" redis-benchmark -h 127.0.0.1 -p "$amb_port" -c "$load_clients" -P "$load_pipeline" \
    -n "$load_n" -r "$keyspace" -t "$load_tests" --csv </dev/null >"$tmp/load.csv" 2>"$tmp/load.err" &
bench_pid=$!
wait "$bench_pid" || rc=$?
bench_pid=""
load_secs=$((SECONDS - load_start))
rss_load_end=$(rss_kib)
stop_pid "$sampler_pid"
sampler_pid=""
check_ambassador
load_rates=$(sed '1d; s/\r$//' "$tmp/load.csv" | awk -F, '{ gsub(/"/, ""); printf "%s%s %.0f req/s", sep, $1, $2; sep = ", " }')
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    load_note="stopped by the ${load_timeout} s bound"
elif [ "$rc" -ne 0 ]; then
    load_note="redis-benchmark exit status $rc: $(tail -n 1 "$tmp/load.err")"
else
    load_note="completed"
fi
rss_load_peak=$(sort -n "$samples" | tail -n 1)
rss_load_median=$(sort -n "$samples" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
echo "redis-benchmark: $load_note in ${load_secs} s (with calibration); ${load_rates:-no rates}"
echo "VmRSS during the load ($(wc -l <"$samples") samples, every 0.5 s): median $(mib "$rss_load_median"), peak $(mib "$rss_load_peak"); at its end $(mib "$rss_load_end")"
sleep 3
rss_after_load=$(rss_kib)
echo "3 s after the load: VmRSS $(mib "$rss_after_load"), $(fd_count) fds"
hwm_quick=$(hwm_kib)

# --- 4. soak -------------------------------------------------------------------------------

soak_done=false
if [ "$soak_minutes" -gt 0 ]; then
    step "4. Soak: $soak_minutes min of mixed load (redis-benchmark -c $soak_clients -t $soak_tests, and a SET/GET probe), upstream restarted every $((restart_every / 60)) min"
    soak_secs=$((soak_minutes * 60))
    runs="$tmp/soak.runs"          # one line per redis-benchmark run: exit status, error text
    : >"$runs"
    # The load: bounded redis-benchmark runs, one after the other, until it is stopped.
    (
        child=""
        # shellcheck disable=SC2317  # invoked through the trap
        on_term() {
            [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
            wait 2>/dev/null
            exit 0
        }
        trap on_term TERM
        limit=$(($(date +%s) + soak_secs + 60))
        while [ "$(date +%s)" -lt "$limit" ]; do
            timeout -k 5 "$soak_run_timeout" redis-benchmark -h 127.0.0.1 -p "$amb_port" \
                -c "$soak_clients" -n "$soak_run_n" -r "$keyspace" -t "$soak_tests" --csv \
                </dev/null >"$tmp/soak.run.out" 2>"$tmp/soak.run.err" &
            child=$!
            rc=0
            wait "$child" || rc=$?
            child=""
            # redis-benchmark ends its error message without a newline.
            why=$(tr '\n' ' ' <"$tmp/soak.run.err" | sed -n 's/.*\(Error[^:]*: .*\)/\1/p' | sed 's/ *$//')
            printf '%s\t%s\n' "$rc" "${why:--}" >>"$runs"
            # LPUSH always pushes onto one list: keep it from growing without bound.
            REDISCLI_AUTH="$password" redis-cli -h 127.0.0.1 -p "$redis_port" DEL mylist >/dev/null 2>&1 || true
            [ "$rc" -eq 0 ] || sleep 0.2
        done
    ) &
    loop_pid=$!
    probe_status="$tmp/probe.status"
    python3 "$tmp/soak_probe.py" "$amb_port" "$probe_status" $((soak_secs + 120)) \
        </dev/null >"$tmp/probe.log" 2>&1 &
    probe_pid=$!
    sleep 5   # warm-up: the load reaches its steady state

    table="$tmp/soak.tsv"
    printf 't\tVmRSS\tfds\tclients\tbench runs (ended on an error)\tprobe pairs (ok)\tprobe -ERR\tprobe conn errors\tprobe nil\tprobe wrong\tambassador errors_total\tevent\n' >"$table"
    events=""
    restarts=0
    sample() {
        local t=$1 rss fds clients errs runs_total runs_failed pairs ok err conn nil wrong
        check_ambassador
        rss=$(rss_kib)
        fds=$(fd_count)
        read -r clients errs < <(amb_metrics)
        runs_total=$(wc -l <"$runs")
        runs_failed=$(awk '$1 != 0' "$runs" | wc -l)
        pairs=0 ok=0 err=0 conn=0 nil=0 wrong=0
        if [ -s "$probe_status" ]; then
            read -r pairs ok err conn nil wrong <"$probe_status"
        fi
        printf '%d:%02d\t%s\t%s\t%s\t%s (%s)\t%s (%s)\t%s\t%s\t%s\t%s\t%s\t%s\n' \
            $((t / 60)) $((t % 60)) "$(mib "$rss")" "$fds" "$clients" "$runs_total" "$runs_failed" \
            "$pairs" "$ok" "$err" "$conn" "$nil" "$wrong" "$errs" "$events" >>"$table"
        printf '  %d:%02d  VmRSS %s  fds %s  clients %s  bench runs %s (%s ended on an error)  probe pairs %s (ok %s): -ERR %s, conn errors %s, nil %s, wrong %s  ambassador errors_total %s%s\n' \
            $((t / 60)) $((t % 60)) "$(mib "$rss")" "$fds" "$clients" "$runs_total" "$runs_failed" \
            "$pairs" "$ok" "$err" "$conn" "$nil" "$wrong" "$errs" "${events:+  [$events]}"
        events=""
        last_rss=$rss last_fds=$fds
    }
    soak_t0=$(date +%s)
    sample 0
    soak_rss_start=$last_rss
    soak_fds_start=$last_fds
    soak_rss_min=$last_rss
    soak_rss_max=$last_rss
    next_sample=$sample_every
    next_restart=$restart_every
    while :; do
        sleep 1
        t=$(($(date +%s) - soak_t0))
        if [ "$t" -ge "$next_restart" ] && [ "$t" -lt "$soak_secs" ]; then
            down_from=$(date +%s%N)
            stop_pid "$redis_pid"
            redis_pid=""
            # shellcheck disable=SC2119  # no extra arguments
            start_redis
            down_ms=$((($(date +%s%N) - down_from) / 1000000))
            restarts=$((restarts + 1))
            events="${events:+$events; }upstream restarted at $((t / 60)):$(printf '%02d' $((t % 60))), down ${down_ms} ms"
            echo "  $((t / 60)):$(printf '%02d' $((t % 60)))  upstream redis-server: SIGTERM, started again on port $redis_port (down ${down_ms} ms, new pid $redis_pid)"
            next_restart=$((next_restart + restart_every))
        fi
        if [ "$t" -ge "$next_sample" ] || [ "$t" -ge "$soak_secs" ]; then
            [ "$t" -ge "$soak_secs" ] && t=$soak_secs
            sample "$t"
            [ "$last_rss" -lt "$soak_rss_min" ] && soak_rss_min=$last_rss
            [ "$last_rss" -gt "$soak_rss_max" ] && soak_rss_max=$last_rss
            next_sample=$((next_sample + sample_every))
        fi
        [ "$t" -ge "$soak_secs" ] && break
    done
    soak_rss_end=$last_rss
    soak_fds_end=$last_fds
    stop_pid "$loop_pid"
    loop_pid=""
    stop_pid "$probe_pid"
    probe_pid=""
    sleep 3
    soak_rss_quiet=$(rss_kib)
    soak_fds_quiet=$(fd_count)
    soak_done=true
fi

# --- report --------------------------------------------------------------------------------

step "Results: redis-ambassador VmRSS (/proc/$amb_pid/status)"
echo
{
    printf 'at start (no clients)\t%s\t%s fds\n' "$(mib "$rss_start")" "$fds_start"
    printf '%s idle clients open\t%s\t+%s over the start, %s per client; %s fds\n' \
        "$idle1_opened" "$(mib "$rss_idle1")" "$(mib $((rss_idle1 - rss_start)))" "$per_client" "$fds_idle1"
    printf 'after they closed\t%s\t\n' "$(mib "$rss_idle1_after")"
    printf '%s idle clients open again (round 2)\t%s\t%s after they closed\n' \
        "$idle2_opened" "$(mib "$rss_idle2")" "$(mib "$rss_idle2_after")"
    printf 'fresh ambassador, before the load\t%s\t\n' "$(mib "$rss_fresh")"
    printf '%s clients, -P %s, %s: median\t%s\tpeak %s (0.5 s samples), %s\n' \
        "$load_clients" "$load_pipeline" "$load_tests" "$(mib "$rss_load_median")" "$(mib "$rss_load_peak")" "${load_rates:-$load_note}"
    printf 'after the load (3 s)\t%s\t\n' "$(mib "$rss_after_load")"
    printf 'VmHWM (peak of the fresh ambassador)\t%s\t\n' "$(mib "$hwm_quick")"
} | awk -F'\t' '{ printf "  %-42s %10s   %s\n", $1, $2, $3 }'

if $soak_done; then
    echo
    echo "Soak, $soak_minutes min ($soak_clients-client redis-benchmark -t $soak_tests in bounded runs; probe: SET/GET pairs on one connection); $restarts upstream restart(s):"
    echo
    # Aligned columns (the last, the events, left as it is).
    awk -F'\t' '
        { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (i < NF && length($i) > w[i]) w[i] = length($i) }; nf[NR] = NF }
        END {
            for (r = 1; r <= NR; r++) {
                out = " "
                for (i = 1; i < nf[r]; i++) out = out sprintf(" %" w[i] "s", cell[r, i])
                out = out "  " cell[r, nf[r]]
                sub(/ +$/, "", out)
                print out
            }
        }
    ' "$table"
    echo
    read -r p_pairs p_ok p_err p_conn p_nil p_wrong <"$probe_status"
    echo "  VmRSS: start $(mib "$soak_rss_start"), end $(mib "$soak_rss_end") ($(awk -v a="$soak_rss_end" -v b="$soak_rss_start" 'BEGIN { printf "%+.1f MiB", (a - b) / 1024 }')), min $(mib "$soak_rss_min"), max $(mib "$soak_rss_max"); 3 s after the load stopped $(mib "$soak_rss_quiet")"
    echo "  open fds: start $soak_fds_start, end $soak_fds_end, 3 s after the load stopped $soak_fds_quiet"
    echo "  probe: $p_pairs SET/GET pairs, $p_ok fully OK, $p_err -ERR replies, $p_conn connection errors, $p_nil nil GETs, $p_wrong wrong values"
    if [ -s "$probe_status.errors" ]; then
        echo "  probe error texts (count, text):"
        sed 's/^/    /' "$probe_status.errors"
    fi
    runs_total=$(wc -l <"$runs")
    runs_failed=$(awk '$1 != 0' "$runs" | wc -l)
    echo "  redis-benchmark: $runs_total runs finished, $runs_failed of them ended on an error (it exits at the first one); the run cut short by the end of the soak is not counted"
    awk -F'\t' '$1 != 0 { print "exit status " $1 ": " $2 }' "$runs" | sort | uniq -c | sort -rn | sed 's/^ */    /'
    classes=$(amb_error_classes | paste -sd ' ' -)
    echo "  ambassador errors_total by class: ${classes:-none}"
fi
echo
echo "Total time: $SECONDS s."

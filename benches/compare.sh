#!/usr/bin/env bash
# Comparison anyone can rerun: redis-benchmark straight at a password-protected Redis, through
# redis-ambassador (release build, no client password) and through twemproxy (nutcracker, with
# redis_auth), all three interleaved in one run so that machine noise spreads evenly.
#
#   benches/compare.sh                 quick mode (the default): 3 repetitions, ~0.8 s per run
#   benches/compare.sh --quick         the same
#   benches/compare.sh --full          5 repetitions, ~3 s per run (about 12 minutes on 2 cores)
#   benches/compare.sh --out FILE      also write the results as Markdown to FILE
#   benches/compare.sh --tls           add a fourth target, ambassador-tls (with either mode)
#   benches/compare.sh --workers 1,2   add one target per listed worker-thread count,
#                                      ambassador-w1 and ambassador-w2 (with either mode, and
#                                      with --tls or without)
#   benches/compare.sh --cluster       instead: the ambassador in cluster mode in front of a
#                                      3-master Redis Cluster against redis-benchmark --cluster
#                                      straight at it (with either mode; not with --tls or
#                                      --workers); see below
#
# Matrix: tests SET, GET, INCR, LPUSH, MSET (redis-benchmark -t, one test per run), random keys
# (-r 100000), each at 50 clients pipeline 1, 50 clients pipeline 16 and 1 client pipeline 1.
# For every repetition, case and test the targets (three, more with --tls or --workers) run
# back to back (the order rotates from one repetition to the next). -n is calibrated once per
# case and test, on short warm-up runs against all the targets, so that one run on each takes
# about the run time on average; it is bounded, and so is every run (timeout). The table gives,
# per case, test and target, the median requests/s over the repetitions, the ratios to direct
# and to twemproxy, and the median p50/p99 latencies with their deltas to direct, in
# microseconds.
#
# It also gives CPU per request. Just before and just after every run it reads the CPU time
# used so far by redis-server (with --cluster: by all the masters, summed) and by the
# target's proxy process (the ambassador, an extra ambassador or nutcracker; none for
# direct), and divides the differences by the run's -n. The table's last three columns,
# Redis µs/req, proxy µs/req (— for direct) and sum µs/req (the two added up run by run),
# are the medians of those per-run figures over the repetitions, in microseconds of CPU per
# request; the summary gives, per case, their range over the tests for Redis (direct,
# through the ambassador, through twemproxy), the ambassador and twemproxy. The CPU time is
# the sum over all the process's threads of the first field of /proc/PID/task/*/schedstat
# (nanoseconds on a CPU) when the kernel has schedstat, else utime + stime from
# /proc/PID/stat (clock ticks, usually 10 ms: coarse); either way it includes the kernel
# time (system calls, loopback TCP) spent on the process's behalf, and anything else the
# process does during the run (Redis's serverCron, the cluster bus, redis-benchmark's
# connection set-up and CONFIG GET). A thread that exits during a run takes its schedstat
# time with it (stat keeps it). The report names the source used.
#
# On Debian it installs redis-server, redis-tools and nutcracker when they are missing (as
# root, or through sudo), and builds the ambassador (cargo build --release). Everything listens
# on 127.0.0.1 only, on free ports picked at random. Everything it starts is stopped, and its
# temporary directory removed, on exit. The generated Redis password lives in 0600 files and
# is never printed; redis-benchmark has no other way to take it than -a, so it does appear on
# redis-benchmark's command line (direct and twemproxy runs) while the benchmark runs.
#
# --tls and --workers each add ambassadors, with the same build and the same config as the
# main one but for their overrides, as more targets interleaved with the others; their rows
# in the table get one more column, ×ambassador: their req/s divided by the main ambassador's.
#
# With --tls, the same redis-server also listens on a TLS port (a throwaway CA and a server
# certificate for 127.0.0.1, made with the openssl CLI in the temporary directory; no client
# certificates), and a second ambassador, with the same config but upstream
# rediss://127.0.0.1:<TLS port> and tls_ca_file set, is the fourth target, interleaved with
# the others. The table and the summary add ambassador-tls / ambassador: the cost of a TLS
# upstream against a plain TCP one. Quick mode with --tls takes about 3-4 minutes.
#
# With --workers LIST (comma-separated thread counts, 0 to 1024, e.g. 1,2), one more ambassador
# per count N, named ambassador-wN, with [runtime] worker_threads = N (the key set, or the
# section added when the config has none): 1 is tokio's current-thread scheduler, N > 1 a
# multi-thread runtime with N workers, 0 one per CPU. The main ambassador keeps config.toml's
# worker_threads (1, the default, unless edited), so ambassador-w1 runs the main ambassador's
# configuration: how far apart those two land shows the noise. A second
# summary gives, per case, the ambassador and each ambassador-wN against direct, twemproxy and
# the ambassador. Each extra target adds about a minute to quick mode and 4 to full mode (on
# 2 cores): quick mode with --workers 1,2 takes about 5 minutes, full mode about 20.
#
# With --cluster there is no standalone Redis and no twemproxy. Three cluster masters (no
# replicas) run on 127.0.0.1, each in its own directory with requirepass (and masterauth) from
# a 0600 file, --cluster-enabled yes, cluster-node-timeout 2000 ms, no persistence; they are
# joined with redis-cli --cluster create --cluster-replicas 0, and the script waits until
# every node says cluster_state:ok with all 16384 slots assigned and three known nodes, and
# all three give the same CLUSTER SLOTS. One ambassador ([upstream] mode = "cluster", address =
# the first master, addresses = the other two, the cluster's password; otherwise config.toml,
# no client password) stands in front of them. The two targets: direct, redis-benchmark
# --cluster -h <first master> -a PASSWORD (it reads the slot map and spreads its clients over
# the masters, round robin: with 1 client, all on one master), and ambassador, plain
# redis-benchmark at the ambassador. Only SET, GET and INCR run: redis-benchmark --cluster
# puts MSET's ten keys in one slot with a hash tag (one master, one request) and pushes onto
# one list per master, while through the ambassador MSET's random keys are split over the
# masters and LPUSH has one list in all, so those two would not compare like with like. The
# table's ×direct is ambassador / direct-to-the-cluster. Quick mode with --cluster takes about
# a minute on 2 cores (18 runs per repetition instead of 45); full mode about 3 minutes.
set -euo pipefail

usage() {
    # The comment block at the top of this file.
    awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
}

mode=quick
out_file=""
tls=false
cluster=false   # --cluster: a 3-master Redis Cluster, direct and through the ambassador
workers=()   # --workers: the worker-thread counts, one more ambassador each

# --workers LIST: comma-separated counts, 0 to 1024 (config.rs's bound), no repeats.
parse_workers() {
    local list=$1 item n w items=()
    if [ -z "$list" ] || [ "${list%,}" != "$list" ]; then
        echo "error: --workers '$list': expected comma-separated thread counts, e.g. 1,2" >&2
        exit 2
    fi
    IFS=, read -r -a items <<<"$list"
    for item in "${items[@]}"; do
        if ! [[ "$item" =~ ^[0-9]{1,4}$ ]] || [ "$((10#$item))" -gt 1024 ]; then
            echo "error: --workers '$list': '$item' is not a thread count from 0 to 1024" >&2
            exit 2
        fi
        n=$((10#$item))
        for w in "${workers[@]}"; do
            if [ "$w" = "$n" ]; then
                echo "error: --workers '$list': $n is listed twice" >&2
                exit 2
            fi
        done
        workers+=("$n")
    done
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --quick) mode=quick ;;
        --full) mode=full ;;
        --out)
            [ "$#" -ge 2 ] || { usage >&2; exit 2; }
            out_file=$2
            shift
            ;;
        --out=*) out_file=${1#--out=} ;;
        --tls) tls=true ;;
        --cluster) cluster=true ;;
        --workers)
            [ "$#" -ge 2 ] || { usage >&2; exit 2; }
            parse_workers "$2"
            shift
            ;;
        --workers=*) parse_workers "${1#--workers=}" ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
    shift
done
if $cluster && { $tls || [ "${#workers[@]}" -gt 0 ]; }; then
    echo "error: --cluster does not combine with --tls or --workers" >&2
    exit 2
fi
if [ -n "$out_file" ]; then
    # Resolve it against the caller's directory before we cd.
    case "$out_file" in
        /*) ;;
        *) out_file="$(pwd)/$out_file" ;;
    esac
    # Fail now rather than after the benchmark.
    : >"$out_file" || { echo "error: cannot write $out_file" >&2; exit 2; }
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo_root=$(pwd)
bench_name=compare
# shellcheck source-path=SCRIPTDIR/.. source=scripts/common.sh disable=SC1091  # followed with shellcheck -x
. scripts/common.sh

# --- parameters ----------------------------------------------------------------------------

keyspace=100000                      # redis-benchmark -r
tests=(set get incr lpush mset)      # redis-benchmark -t, one per run
if $cluster; then
    tests=(set get incr)             # see the top of the file for why not LPUSH and MSET
fi
case_ids=(c50p1 c50p16 c1p1)
case_clients=(50 50 1)
case_pipeline=(1 16 1)
case_labels=("50 clients, pipeline 1" "50 clients, pipeline 16" "1 client, pipeline 1")
# The extra ambassadors (--tls, --workers), each one more target: its name, its upstream
# (plain: redis-server's port; tls: redis-server's TLS port, with tls_ca_file = the throwaway
# CA) and its overrides of the main ambassador's config ("section.key=value" words, the value
# as TOML, set with set_config_value). Their ports and pids are filled in when they start.
extra_names=()
extra_upstreams=()
extra_overrides=()
if $tls; then
    extra_names+=(ambassador-tls)
    extra_upstreams+=(tls)
    extra_overrides+=("")
fi
for w in "${workers[@]}"; do
    extra_names+=("ambassador-w$w")
    extra_upstreams+=(plain)
    extra_overrides+=("runtime.worker_threads=$w")
done
extra_ports=()
extra_pids=()
for i in "${!extra_names[@]}"; do
    extra_pids[i]=""
done
targets=(direct ambassador twemproxy "${extra_names[@]}")
if $cluster; then
    targets=(direct ambassador)      # direct: redis-benchmark --cluster at the masters
fi
cluster_size=3                       # --cluster: masters, no replicas
cluster_node_timeout_ms=2000
workers_list=$(printf '%s, ' "${workers[@]}" | sed 's/, $//')   # "1, 2"
number_words=(zero one two three four five six seven eight nine ten eleven twelve)
targets_word=${number_words[${#targets[@]}]:-${#targets[@]}}
tests_word=${number_words[${#tests[@]}]:-${#tests[@]}}
# Requests per warm-up (calibration) run, per case: ~0.1-0.5 s each.
case_cal_n=(20000 100000 2000)
n_min=1000
if [ "$mode" = full ]; then
    reps=5
    run_ms=3000        # aimed duration of one run (the mean over the targets)
    n_max=20000000
    run_timeout=60     # seconds; a run that takes longer is killed and counted as failed
else
    reps=3
    run_ms=800
    n_max=4000000
    run_timeout=20
fi
expected_header='"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"'

# --- helpers -------------------------------------------------------------------------------

nutcracker_bin() {
    if command -v nutcracker >/dev/null 2>&1; then
        command -v nutcracker
    elif [ -x /usr/sbin/nutcracker ]; then
        echo /usr/sbin/nutcracker
    else
        return 1
    fi
}

# config_value FILE SECTION KEY: print the value of KEY in [SECTION] of the TOML file FILE (as
# written, comment stripped), nothing when it is not there.
config_value() {
    awk -v want="$2" -v key="$3" '
        /^[[:space:]]*\[[^]]*\][[:space:]]*(#.*)?$/ {
            section = $0
            sub(/^[[:space:]]*\[/, "", section); sub(/\].*$/, "", section); gsub(/[[:space:]]/, "", section)
            next
        }
        section == want && $0 ~ "^[[:space:]]*" key "[[:space:]]*=" {
            v = $0
            sub(/^[^=]*=[[:space:]]*/, "", v); sub(/[[:space:]]*#.*$/, "", v); sub(/[[:space:]]+$/, "", v)
            print v
            exit
        }
    ' "$1"
}

# set_config_value FILE SECTION KEY VALUE: in the ambassador config FILE, make [SECTION] say
# KEY = VALUE (VALUE as TOML): the key's line replaced when the section has it, a line added
# under the section's header when it has not, the section appended when the file has none.
set_config_value() {
    local file=$1 section=$2 key=$3 value=$4
    # Two passes over FILE: the first finds whether the section has the key.
    awk -v want="$section" -v key="$key" -v value="$value" '
        /^[[:space:]]*\[[^]]*\][[:space:]]*(#.*)?$/ {
            section = $0
            sub(/^[[:space:]]*\[/, "", section); sub(/\].*$/, "", section); gsub(/[[:space:]]/, "", section)
            if (NR > FNR) {
                print
                if (section == want && !has_key && !done) { print key " = " value; done = 1 }
                next
            }
        }
        section == want && $0 ~ "^[[:space:]]*" key "[[:space:]]*=" {
            if (NR == FNR) { has_key = 1; next }
            if (!done) print key " = " value
            done = 1
            next
        }
        NR == FNR { next }
        FNR == 1 { section = "" }
        { print }
        END { if (!done) printf "\n[%s]\n%s = %s\n", want, key, value }
    ' "$file" "$file" >"$file.new"
    mv -- "$file.new" "$file"
    [ "$(config_value "$file" "$section" "$key")" = "$value" ] \
        || die "could not set [$section] $key = $value in $file"
}

# target_extra TARGET: print the index of the extra ambassador TARGET; return 1 when it is none.
target_extra() {
    local i
    for i in "${!extra_names[@]}"; do
        if [ "${extra_names[$i]}" = "$1" ]; then
            echo "$i"
            return 0
        fi
    done
    return 1
}

# Where CPU times come from: schedstat (/proc/PID/task/TID/schedstat, field 1: nanoseconds on
# a CPU, user and kernel) when this kernel has it and it counts, else /proc/PID/stat (utime +
# stime, in clock ticks).
cpu_source=stat
clk_tck=""
if [ -r "/proc/$$/task/$$/schedstat" ] && read -r _cpu_probe _ <"/proc/$$/task/$$/schedstat" \
    && [[ "$_cpu_probe" =~ ^[0-9]+$ ]] && [ "$_cpu_probe" -gt 0 ]; then
    cpu_source=schedstat
else
    clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)
    [[ "$clk_tck" =~ ^[1-9][0-9]*$ ]] || clk_tck=100
fi
unset _cpu_probe

# cpu_sample VAR PID...: set the variable named VAR to the CPU time used so far by the
# processes PID... (all their threads), in nanoseconds. No fork: it runs right before and
# right after each benchmark run. A process that is gone counts 0 (the run fails anyway).
cpu_sample() {
    local var=$1 pid f ns line total=0
    local fields=()
    shift
    for pid in "$@"; do
        [ -n "$pid" ] || continue
        if [ "$cpu_source" = schedstat ]; then
            for f in /proc/"$pid"/task/*/schedstat; do
                # A thread may exit between the glob and the read.
                { read -r ns _ <"$f"; } 2>/dev/null && [[ "$ns" =~ ^[0-9]+$ ]] && total=$((total + ns))
            done
        else
            { read -r line <"/proc/$pid/stat"; } 2>/dev/null || continue
            # Field 2, comm, is in parentheses and may hold spaces (even parentheses): the
            # fields from 3 on follow the last ')'. utime and stime are fields 14 and 15.
            read -r -a fields <<<"${line##*)}"
            [[ "${fields[11]:-}" =~ ^[0-9]+$ && "${fields[12]:-}" =~ ^[0-9]+$ ]] || continue
            total=$((total + (fields[11] + fields[12]) * 1000000000 / clk_tck))
        fi
    done
    printf -v "$var" '%s' "$total"
}

# Install, from Debian's packages, whichever of redis-server, redis-tools (redis-cli,
# redis-benchmark) and nutcracker (not with --cluster; with --tls, openssl) is missing.
ensure_tools() {
    local missing=()
    if ! $cluster; then
        nutcracker_bin >/dev/null || missing+=(nutcracker)
    fi
    if $tls && ! command -v openssl >/dev/null 2>&1; then
        missing+=(openssl)
    fi
    command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) not found"
    install_bench_packages "${missing[@]}"
    if ! $cluster; then
        nutcracker_bin >/dev/null || die "nutcracker still not found after apt-get install"
    fi
    if $tls; then
        command -v openssl >/dev/null 2>&1 || die "openssl still not on PATH after apt-get install"
    fi
}

# --- clean-up ------------------------------------------------------------------------------

tmp=""
redis_pid=""
amb_pid=""
twem_pid=""
bench_pid=""
# --cluster: the masters' ports, cluster bus ports and pids. The first master is also
# redis_port and redis_pid (the seed that redis-benchmark --cluster and the ambassador are
# given), so clean-up stops it as redis_pid, after the others.
node_ports=()
node_bus_ports=()
node_pids=()

# The ambassadors before twemproxy and redis-server (or the cluster's masters).
cleanup_pid_vars=(bench_pid amb_pid)
for i in "${!extra_names[@]}"; do
    cleanup_pid_vars+=("extra_pids[$i]")
done
if $cluster; then
    for ((i = cluster_size - 1; i >= 1; i--)); do
        node_pids[i]=""
        cleanup_pid_vars+=("node_pids[$i]")
    done
fi
cleanup_pid_vars+=(twem_pid redis_pid)
trap_bench_cleanup

# --- prerequisites and build ---------------------------------------------------------------

ensure_tools
ensure_cargo
nutcracker=""
if ! $cluster; then
    nutcracker=$(nutcracker_bin)
fi

build_ambassador
make_bench_tmp

# --- the targets ----------------------------------------------------------------------------

# With --tls: a throwaway CA (P-256, valid 2 days) and a server certificate it signs, for
# IP 127.0.0.1, from minimal openssl configs of our own (not the system's openssl.cnf).
make_certs() {
    local dir=$1
    (
        umask 077
        cd "$dir"
        cat >ca.cnf <<'EOF'
[req]
prompt = no
distinguished_name = dn
x509_extensions = ext
[dn]
CN = redis-ambassador compare.sh throwaway CA
[ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
        cat >server.cnf <<'EOF'
[req]
prompt = no
distinguished_name = dn
[dn]
CN = 127.0.0.1
EOF
        cat >server-ext.cnf <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -config ca.cnf -days 2 -keyout ca.key -out ca.crt
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -config server.cnf -keyout server.key -out server.csr
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial "$((RANDOM + 1))" \
            -days 2 -extfile server-ext.cnf -out server.crt
        openssl verify -CAfile ca.crt server.crt
    ) >"$dir/openssl.log" 2>&1
}

# read_main_workers CONFIG: set main_workers ([runtime] worker_threads in the main
# ambassador's CONFIG, empty when unset) and main_workers_shown (the same, for the report).
read_main_workers() {
    main_workers=$(config_value "$1" runtime worker_threads)
    case "${main_workers:-unset}" in
        unset) main_workers_shown="0 (unset: one per CPU)" ;;
        0) main_workers_shown="0 (one per CPU)" ;;
        *) main_workers_shown=$main_workers ;;
    esac
}

# --cluster: redis-cli at the master on 127.0.0.1:PORT with the cluster's password (through the
# environment, never the command line), bounded in time: node_cli PORT ARGS...
node_cli() {
    local port=$1
    shift
    REDISCLI_AUTH="$password" timeout -k 1 5 redis-cli -h 127.0.0.1 -p "$port" "$@" </dev/null 2>/dev/null
}

# --cluster: true when every master says cluster_state:ok, all 16384 slots assigned and
# $cluster_size known nodes, all give the same CLUSTER SLOTS, and that names no address other
# than 127.0.0.1 (so that neither client is sent anywhere else).
cluster_settled() {
    local i info slots first="" elsewhere
    for i in "${!node_ports[@]}"; do
        info=$(node_cli "${node_ports[$i]}" CLUSTER INFO | tr -d '\r') || return 1
        grep -qx 'cluster_state:ok' <<<"$info" || return 1
        grep -qx 'cluster_slots_assigned:16384' <<<"$info" || return 1
        grep -qx "cluster_known_nodes:$cluster_size" <<<"$info" || return 1
        slots=$(node_cli "${node_ports[$i]}" CLUSTER SLOTS | tr -d '\r') || return 1
        [ -n "$slots" ] || return 1
        if [ "$i" -eq 0 ]; then
            first=$slots
        elif [ "$slots" != "$first" ]; then
            return 1
        fi
    done
    elsewhere=$(grep -E '^[0-9]+(\.[0-9]+){3}$' <<<"$first" | grep -vx '127\.0\.0\.1' | sort -u | tr '\n' ' ' || true)
    if [ -n "$elsewhere" ]; then
        die "the cluster's slot map names an address other than 127.0.0.1: $elsewhere"
    fi
}

# With --cluster: $cluster_size password-protected cluster masters (no replicas, no
# persistence), each in its own directory under $tmp with its nodes.conf, joined with
# redis-cli --cluster create, and the ambassador in cluster mode in front of them.
start_cluster_targets() {
    local i dir node_conf addrs=() others=() settle_deadline
    step "Starting a ${cluster_size}-master Redis Cluster and redis-ambassador (mode = \"cluster\") on 127.0.0.1"
    make_redis_password
    # requirepass and masterauth (for parity with tests/common/cluster.rs; no replica uses
    # it here) in a 0600 file, not on redis-server's command line.
    node_conf="$tmp/cluster-node.conf"
    (
        umask 077
        {
            printf 'requirepass %s\n' "$password"
            printf 'masterauth %s\n' "$password"
        } >"$node_conf"
    )
    for ((i = 0; i < cluster_size; i++)); do
        node_ports[i]=$(free_port "${ports_taken[@]}")
        ports_taken+=("${node_ports[$i]}")
        # The cluster bus port is picked too (cluster-port), rather than left at port +
        # 10000, which may be taken or over 65535.
        node_bus_ports[i]=$(free_port "${ports_taken[@]}")
        ports_taken+=("${node_bus_ports[$i]}")
        dir="$tmp/node$i"
        mkdir -m 700 "$dir"
        redis-server "$node_conf" \
            --port "${node_ports[$i]}" --bind 127.0.0.1 \
            --cluster-enabled yes --cluster-port "${node_bus_ports[$i]}" \
            --cluster-config-file nodes.conf --cluster-node-timeout "$cluster_node_timeout_ms" \
            --save "" --appendonly no \
            --dir "$dir" --logfile "$dir/redis.log" \
            </dev/null >/dev/null 2>&1 &
        node_pids[i]=$!
        if [ "$i" -eq 0 ]; then
            redis_port=${node_ports[0]}
            redis_pid=${node_pids[0]}
        fi
        addrs+=("127.0.0.1:${node_ports[$i]}")
    done
    # Each answers PING (a cluster node without slots refuses SET, so not wait_ready).
    for i in "${!node_ports[@]}"; do
        for _ in $(seq 1 100); do
            kill -0 "${node_pids[$i]}" 2>/dev/null || break
            [ "$(node_cli "${node_ports[$i]}" PING)" = PONG ] && continue 2
            sleep 0.1
        done
        show_log "cluster node $i" "$tmp/node$i/redis.log"
        die "cluster node $i did not come up on 127.0.0.1:${node_ports[$i]}"
    done
    if ! REDISCLI_AUTH="$password" timeout -k 5 60 redis-cli --cluster create "${addrs[@]}" \
        --cluster-replicas 0 --cluster-yes </dev/null >"$tmp/cluster-create.log" 2>&1; then
        show_log "redis-cli --cluster create" "$tmp/cluster-create.log"
        die "redis-cli --cluster create failed"
    fi
    settle_deadline=$((SECONDS + 60))
    until cluster_settled; do
        if [ "$SECONDS" -ge "$settle_deadline" ]; then
            for i in "${!node_ports[@]}"; do
                show_log "cluster node $i" "$tmp/node$i/redis.log"
            done
            die "the cluster did not settle (cluster_state:ok, every slot assigned, the same CLUSTER SLOTS on every node) within 60 s"
        fi
        sleep 0.2
    done
    for i in "${!node_ports[@]}"; do
        printf 'cluster master %s  127.0.0.1:%s (pid %s), bus port %s, %s slots\n' "$i" "${node_ports[$i]}" \
            "${node_pids[$i]}" "${node_bus_ports[$i]}" \
            "$(node_cli "${node_ports[$i]}" CLUSTER NODES | awk '/myself/ { n = 0; for (f = 9; f <= NF; f++) { split($f, r, "-"); n += (r[2] == "" ? 1 : r[2] - r[1] + 1) } print n }')"
    done
    echo "                  cluster_state:ok on every master, the same slot map on all; password in a 0600 file"

    # The ambassador: config.toml with the listen/metrics addresses, the password file and
    # drain_delay_ms = 0 (derive_config), then mode = "cluster" and the other masters as
    # more seeds.
    amb_port=$(free_port "${ports_taken[@]}")
    ports_taken+=("$amb_port")
    metrics_port=$(free_port "${ports_taken[@]}")
    ports_taken+=("$metrics_port")
    config="$tmp/ambassador.toml"
    derive_config "$config" "127.0.0.1:$amb_port" "127.0.0.1:$redis_port" "127.0.0.1:$metrics_port"
    for i in "${!node_ports[@]}"; do
        [ "$i" -eq 0 ] || others+=("\"127.0.0.1:${node_ports[$i]}\"")
    done
    set_config_value "$config" upstream mode '"cluster"'
    set_config_value "$config" upstream addresses "[$(printf '%s, ' "${others[@]}" | sed 's/, $//')]"
    if ! check_out=$("$ambassador" --config "$config" --check 2>&1); then
        printf '%s\n' "$check_out" >&2
        die "redis-ambassador --check rejected its cluster-mode config ($config)"
    fi
    read_main_workers "$config"
    # Ready means a SET went through it to the key's master.
    start_ambassador amb_pid "$config" "$amb_port" "$tmp/ambassador.log"
    drain_note=""
    if $has_drain; then
        drain_note=", drain_delay_ms = 0"
    fi
    echo "redis-ambassador  127.0.0.1:$amb_port (pid $amb_pid), metrics 127.0.0.1:$metrics_port, mode = \"cluster\", seeds: the $cluster_size masters, no client password$drain_note"
}

# Without --cluster: a password-protected redis-server, the ambassador and twemproxy (and
# with --tls or --workers, the extra ambassadors).
start_standalone_targets() {
    # "Starting A, B and C on 127.0.0.1"
    starting=(redis-server redis-ambassador twemproxy)
    if $tls; then
        starting[0]="redis-server (with a TLS port)"
        starting+=("redis-ambassador with a TLS upstream")
    fi
    for w in "${workers[@]}"; do
        starting+=("redis-ambassador with worker_threads = $w")
    done
    step "Starting $(printf '%s, ' "${starting[@]:0:${#starting[@]}-1}" | sed 's/, $//') and ${starting[-1]} on 127.0.0.1"
    make_redis_password

    redis_port=$(free_port "${ports_taken[@]}")
    ports_taken+=("$redis_port")
    redis_tls_args=()
    if $tls; then
        mkdir -m 700 "$tmp/tls"
        if ! make_certs "$tmp/tls"; then
            show_log openssl "$tmp/tls/openssl.log"
            die "could not make the throwaway CA and server certificate with openssl"
        fi
        redis_tls_port=$(free_port "${ports_taken[@]}")
        ports_taken+=("$redis_tls_port")
        redis_tls_args=(--tls-port "$redis_tls_port"
            --tls-cert-file "$tmp/tls/server.crt" --tls-key-file "$tmp/tls/server.key"
            --tls-ca-cert-file "$tmp/tls/ca.crt" --tls-auth-clients no)
    fi
    start_redis "${redis_tls_args[@]}"
    if $tls; then
        echo "redis-server      127.0.0.1:$redis_port and TLS 127.0.0.1:$redis_tls_port (pid $redis_pid), password in a 0600 file"
    else
        echo "redis-server      127.0.0.1:$redis_port (pid $redis_pid), password in a 0600 file"
    fi

    # --- the ambassador, with a config derived from the repo's config.toml ------------------

    # config.toml with listen/upstream/metrics addresses, the password file, and [shutdown]
    # drain_delay_ms = 0 when config.toml has that key (see derive_config in scripts/common.sh).
    # The extra ambassadors (below) derive theirs the same way, then apply their overrides.
    amb_port=$(free_port "${ports_taken[@]}")
    ports_taken+=("$amb_port")
    metrics_port=$(free_port "${ports_taken[@]}")
    ports_taken+=("$metrics_port")
    config="$tmp/ambassador.toml"
    derive_config "$config" "127.0.0.1:$amb_port" "127.0.0.1:$redis_port" "127.0.0.1:$metrics_port"

    # What the main ambassador runs with (for the report; the extra ones override it).
    read_main_workers "$config"

    start_ambassador amb_pid "$config" "$amb_port" "$tmp/ambassador.log"
    drain_note=""
    if $has_drain; then
        drain_note=", drain_delay_ms = 0"
    fi
    echo "redis-ambassador  127.0.0.1:$amb_port (pid $amb_pid), metrics 127.0.0.1:$metrics_port, no client password$drain_note"

    # --- twemproxy -------------------------------------------------------------------------

    twem_port=$(free_port "${ports_taken[@]}")
    ports_taken+=("$twem_port")
    twem_stats_port=$(free_port "${ports_taken[@]}")
    ports_taken+=("$twem_stats_port")
    twem_conf="$tmp/nutcracker.yml"
    (
        umask 077
        # With redis_auth, twemproxy authenticates to Redis and also requires its clients to send
        # AUTH with the same password (redis-benchmark -a).
        cat >"$twem_conf" <<EOF
bench:
  listen: 127.0.0.1:$twem_port
  hash: fnv1a_64
  distribution: ketama
  redis: true
  redis_auth: "$password"
  preconnect: true
  auto_eject_hosts: false
  server_connections: 1
  servers:
   - 127.0.0.1:$redis_port:1
EOF
    )
    "$nutcracker" --test-conf --conf-file="$twem_conf" >"$tmp/nutcracker-test.log" 2>&1 \
        || { show_log nutcracker "$tmp/nutcracker-test.log"; die "nutcracker rejected its config"; }
    "$nutcracker" --conf-file="$twem_conf" --output="$tmp/nutcracker.log" \
        --stats-addr=127.0.0.1 --stats-port="$twem_stats_port" --pid-file="$tmp/nutcracker.pid" \
        </dev/null >/dev/null 2>&1 &
    twem_pid=$!
    if ! wait_ready "$twem_pid" "$twem_port" "$password"; then
        show_log nutcracker "$tmp/nutcracker.log"
        die "twemproxy did not come up on 127.0.0.1:$twem_port"
    fi
    echo "twemproxy         127.0.0.1:$twem_port (pid $twem_pid), stats 127.0.0.1:$twem_stats_port, redis_auth set, 1 server connection"

    # --- the extra ambassadors (--tls, --workers) --------------------------------------------

    for i in "${!extra_names[@]}"; do
        name=${extra_names[$i]}
        extra_ports[i]=$(free_port "${ports_taken[@]}")
        ports_taken+=("${extra_ports[$i]}")
        extra_metrics_port=$(free_port "${ports_taken[@]}")
        ports_taken+=("$extra_metrics_port")
        cafile=""
        if [ "${extra_upstreams[$i]}" = tls ]; then
            upstream="rediss://127.0.0.1:$redis_tls_port"
            cafile="$tmp/tls/ca.crt"
        else
            upstream="127.0.0.1:$redis_port"
        fi
        extra_config="$tmp/$name.toml"
        derive_config "$extra_config" "127.0.0.1:${extra_ports[$i]}" "$upstream" \
            "127.0.0.1:$extra_metrics_port" "$cafile"
        notes=""
        if [ -n "${extra_overrides[$i]}" ]; then
            for override in ${extra_overrides[$i]}; do   # words: section.key=value
                key=${override%%=*}
                set_config_value "$extra_config" "${key%%.*}" "${key#*.}" "${override#*=}"
                notes="$notes, [${key%%.*}] ${key#*.} = ${override#*=}"
            done
            if ! check_out=$("$ambassador" --config "$extra_config" --check 2>&1); then
                printf '%s\n' "$check_out" >&2
                die "redis-ambassador --check rejected $name's config ($extra_config)"
            fi
        fi
        # Ready means a SET went through it (so, for ambassador-tls, over TLS to Redis).
        if ! spawn_ambassador "extra_pids[$i]" "$extra_config" "${extra_ports[$i]}" "$tmp/$name.log"; then
            show_log "$name" "$tmp/$name.log"
            show_log redis-server "$tmp/redis.log"
            die "$name did not come up on 127.0.0.1:${extra_ports[$i]}"
        fi
        if [ -n "$cafile" ]; then
            notes="$notes, tls_ca_file = the throwaway CA"
        fi
        printf '%-17s 127.0.0.1:%s (pid %s), metrics 127.0.0.1:%s, upstream %s%s\n' "$name" \
            "${extra_ports[$i]}" "${extra_pids[$i]}" "$extra_metrics_port" "$upstream" "$notes"
    done
}

# Every port is a free one on 127.0.0.1, none of those picked before (nor 6379).
ports_taken=(6379)
if $cluster; then
    start_cluster_targets
else
    start_standalone_targets
fi

# --- about this run ------------------------------------------------------------------------

cpu_model=$(cpu_model_name)
redis_version=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
bench_version=$(redis-benchmark --version 2>/dev/null | awk '{ print $2 }')
twem_version=""
if [ -n "$nutcracker" ]; then
    twem_version=$("$nutcracker" --version 2>&1 | sed -n 's/.*nutcracker-\([^ ]*\).*/\1/p' | head -n 1)
fi
rustc_version=$(rustc --version 2>/dev/null | awk '{ print $2 }')
openssl_version=""
if $tls; then
    openssl_version=$(openssl version 2>/dev/null | awk '{ print $2 }')
fi
git_rev=$(ambassador_git_rev)
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# --- benchmark -----------------------------------------------------------------------------

# One row per successful run: case test target rep rps p50_ms p99_ms redis_cpu_ns proxy_cpu_ns,
# the last two the CPU time (ns) redis-server (with --cluster: all the masters) and the
# target's proxy process used during the run ("-" for direct: no proxy).
results="$tmp/results.tsv"
sizes="$tmp/sizes.tsv"       # case test n
: >"$results"
: >"$sizes"
failures=0

target_port() {
    local i
    case "$1" in
        direct) echo "$redis_port" ;;
        ambassador) echo "$amb_port" ;;
        twemproxy) echo "$twem_port" ;;
        *) i=$(target_extra "$1") && echo "${extra_ports[$i]}" ;;
    esac
}
target_pid() {
    local i
    case "$1" in
        direct) echo "$redis_pid" ;;
        ambassador) echo "$amb_pid" ;;
        twemproxy) echo "$twem_pid" ;;
        *) i=$(target_extra "$1") && echo "${extra_pids[$i]}" ;;
    esac
}
# Whose CPU time counts as Redis's: redis-server, or with --cluster every master.
redis_cpu_pids=("$redis_pid")
if $cluster; then
    redis_cpu_pids=("${node_pids[@]}")
fi

# One redis-benchmark run: target clients pipeline test n. Sets r_rps, r_p50, r_p99 (ms),
# r_redis_ns and r_proxy_ns (the CPU time Redis and the target's proxy used from just before
# the run to just after it, in ns; r_proxy_ns is "-" for direct); returns 1 when the run
# failed or timed out. (redis-benchmark 7 exits, status 1, at the first error reply, saying
# "Error from server: …" on stderr; with --cluster it follows -MOVED and -ASK itself.)
#
# redis-benchmark's stdout: with --cluster, first the masters it found ("Cluster has 3
# master nodes:", then one line per master), then, as without it, the CSV header and one
# row. So the header is looked for, not assumed on line 1, and the row is the line after it
# that starts with a quote.
run_bench() {
    local target=$1 clients=$2 pipeline=$3 test=$4 n=$5 port rc=0 header line
    local auth=() mode_args=()
    local proxy_pid="" redis_before redis_after proxy_before=0 proxy_after=0
    port=$(target_port "$target")
    [ "$target" = direct ] || proxy_pid=$(target_pid "$target")
    # The ambassadors have no client password: the application connects without one.
    case "$target" in
        ambassador | ambassador-*) ;;
        *) auth=(-a "$password") ;;
    esac
    # With --cluster, direct is redis-benchmark's own cluster client (slot map, one
    # connection per client to the key's master).
    if $cluster && [ "$target" = direct ]; then
        mode_args=(--cluster)
    fi
    cpu_sample redis_before "${redis_cpu_pids[@]}"
    [ -z "$proxy_pid" ] || cpu_sample proxy_before "$proxy_pid"
    timeout -k 5 "$run_timeout" redis-benchmark "${mode_args[@]}" -h 127.0.0.1 -p "$port" "${auth[@]}" \
        -c "$clients" -P "$pipeline" -n "$n" -r "$keyspace" -t "$test" --csv \
        </dev/null >"$tmp/run.csv" 2>"$tmp/run.err" &
    bench_pid=$!
    wait "$bench_pid" || rc=$?
    bench_pid=""
    [ -z "$proxy_pid" ] || cpu_sample proxy_after "$proxy_pid"
    cpu_sample redis_after "${redis_cpu_pids[@]}"
    r_redis_ns=$((redis_after - redis_before))
    r_proxy_ns=-
    [ -z "$proxy_pid" ] || r_proxy_ns=$((proxy_after - proxy_before))
    header=$(awk '/^"test",/ { sub(/\r$/, ""); print; exit }' "$tmp/run.csv")
    if [ -n "$header" ] && [ "$header" != "$expected_header" ]; then
        die "unexpected redis-benchmark --csv header: $header (expected $expected_header)"
    fi
    line=$(awk 'seen && /^"/ { sub(/\r$/, ""); print; exit } /^"test",/ { seen = 1 }' "$tmp/run.csv")
    if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            echo "  (timed out after ${run_timeout}s)" >"$tmp/run.why"
        else
            { echo "  (exit status $rc)"; tail -n 3 "$tmp/run.err" | grep -v 'Could not fetch server CONFIG' | sed 's/^/  /'; } >"$tmp/run.why"
        fi
        return 1
    fi
    if [ "${#mode_args[@]}" -gt 0 ] && ! grep -q "^Cluster has $cluster_size master nodes" "$tmp/run.csv"; then
        { echo "  (redis-benchmark --cluster did not report $cluster_size masters:)"; head -n 3 "$tmp/run.csv" | sed 's/^/  /'; } >"$tmp/run.why"
        return 1
    fi
    read -r r_rps r_p50 r_p99 < <(printf '%s\n' "$line" | awk -F, '{ gsub(/"/, ""); print $2, $5, $7 }')
    [[ "$r_rps" =~ ^[0-9.]+$ && "$r_p50" =~ ^[0-9.]+$ && "$r_p99" =~ ^[0-9.]+$ ]] || {
        echo "  (could not read: $line)" >"$tmp/run.why"
        return 1
    }
}

# Die if a target's process has exited (everything after would fail the same way). With
# --cluster, direct is every master.
check_alive() {
    local target=$1 pid log i
    if $cluster && [ "$target" = direct ]; then
        for i in "${!node_pids[@]}"; do
            kill -0 "${node_pids[$i]}" 2>/dev/null && continue
            show_log "cluster node $i" "$tmp/node$i/redis.log"
            die "cluster master $i (127.0.0.1:${node_ports[$i]}, pid ${node_pids[$i]}) has exited"
        done
        return 0
    fi
    pid=$(target_pid "$target")
    kill -0 "$pid" 2>/dev/null && return 0
    case "$target" in
        direct) log=redis.log ;;
        ambassador) log=ambassador.log ;;
        twemproxy) log=nutcracker.log ;;
        *) log="$target.log" ;;   # the extra ambassadors
    esac
    show_log "$target" "$tmp/$log"
    die "the $target target (pid $pid) has exited"
}

# redis-benchmark's LPUSH always pushes onto one list: empty it between trios so that it
# cannot grow without bound (not timed).
reset_list() {
    REDISCLI_AUTH="$password" redis-cli -h 127.0.0.1 -p "$redis_port" DEL mylist >/dev/null 2>&1 || true
}

all_targets="all $targets_word targets"
[ "${#targets[@]}" -eq 2 ] && all_targets="both targets"
step "Calibrating -n (short warm-up runs, $all_targets, aiming at ~${run_ms} ms per run)"
for ci in "${!case_ids[@]}"; do
    line="  ${case_labels[$ci]}:"
    for test in "${tests[@]}"; do
        inv_sum=0
        for target in "${targets[@]}"; do
            if ! run_bench "$target" "${case_clients[$ci]}" "${case_pipeline[$ci]}" "$test" "${case_cal_n[$ci]}"; then
                cat "$tmp/run.why" >&2
                check_alive "$target"
                die "warm-up run failed: $target, ${case_labels[$ci]}, $test"
            fi
            inv_sum=$(awk -v s="$inv_sum" -v r="$r_rps" 'BEGIN { printf "%.12f", s + 1 / r }')
        done
        [ "$test" = lpush ] && reset_list
        # n such that the runs (one per target, G of them) together take ~G x run_ms: run_ms x
        # the harmonic mean of the G rates, rounded to a thousand and bounded.
        n=$(awk -v s="$inv_sum" -v g="${#targets[@]}" -v ms="$run_ms" -v lo="$n_min" -v hi="$n_max" \
            'BEGIN { n = int(g / s * ms / 1000 / 1000 + 0.5) * 1000; if (n < lo) n = lo; if (n > hi) n = hi; print n }')
        printf '%s\t%s\t%s\n' "${case_ids[$ci]}" "$test" "$n" >>"$sizes"
        line="$line $test=$n"
    done
    echo "$line"
done

step "Running: $reps repetitions x ${#case_ids[@]} cases x ${#tests[@]} tests x ${#targets[@]} targets, interleaved"
bench_start=$SECONDS
for rep in $(seq 1 "$reps"); do
    # Rotate the order of the targets from one repetition to the next.
    shift_by=$(((rep - 1) % ${#targets[@]}))
    order=("${targets[@]:$shift_by}" "${targets[@]:0:$shift_by}")
    for ci in "${!case_ids[@]}"; do
        line="  rep $rep/$reps  ${case_labels[$ci]}:"
        for test in "${tests[@]}"; do
            n=$(awk -v c="${case_ids[$ci]}" -v t="$test" -F'\t' '$1 == c && $2 == t { print $3 }' "$sizes")
            mark=""
            for target in "${order[@]}"; do
                if run_bench "$target" "${case_clients[$ci]}" "${case_pipeline[$ci]}" "$test" "$n"; then
                    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${case_ids[$ci]}" "$test" "$target" "$rep" \
                        "$r_rps" "$r_p50" "$r_p99" "$r_redis_ns" "$r_proxy_ns" >>"$results"
                else
                    failures=$((failures + 1))
                    mark="$mark!"
                    {
                        echo "warning: run failed: $target, ${case_labels[$ci]}, $test, n=$n"
                        cat "$tmp/run.why"
                    } >&2
                    check_alive "$target"
                fi
            done
            [ "$test" = lpush ] && reset_list
            line="$line $test$mark"
        done
        echo "$line"
    done
done
bench_secs=$((SECONDS - bench_start))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report --------------------------------------------------------------------------------

# The table, as tab-separated rows (first row: header), with medians over the repetitions.
table="$tmp/table.tsv"
summary="$tmp/summary.tsv"
summary_workers="$tmp/summary-workers.tsv"   # with --workers
worker_targets=""
for w in "${workers[@]}"; do
    worker_targets="$worker_targets ambassador-w$w"
done
LC_ALL=C awk -F'\t' -v OFS='\t' \
    -v cases="${case_ids[*]}" -v labels="$(printf '%s|' "${case_labels[@]}")" \
    -v tests="${tests[*]}" -v targets="${targets[*]}" -v summary="$summary" -v tls="$tls" \
    -v extras="${extra_names[*]}" -v wtargets="$worker_targets" -v wsummary="$summary_workers" \
    -v main_workers="$main_workers_shown" -v twem="$($cluster && echo false || echo true)" '
    function median(key,    k, m, i, j, v, a) {
        if (!(key in vals)) return ""
        m = split(vals[key], a, " ")
        for (i = 2; i <= m; i++) {       # insertion sort (mawk has no asort)
            v = a[i] + 0
            for (j = i - 1; j >= 1 && a[j] + 0 > v; j--) a[j + 1] = a[j]
            a[j + 1] = v
        }
        if (m % 2) return a[(m + 1) / 2] + 0
        return (a[m / 2] + a[m / 2 + 1]) / 2
    }
    function ratio(x, y) { return (x == "" || y == "" || y == 0) ? "-" : sprintf("%.2f×", x / y) }
    function us(x) { return x == "" ? "-" : sprintf("%.0f", x * 1000) }
    function delta(x, y) { return (x == "" || y == "") ? "-" : sprintf("%+.0f", (x - y) * 1000) }
    function minmax(name, v) {
        if (v == "") return
        if (!(name in lo) || v < lo[name]) lo[name] = v
        if (!(name in hi) || v > hi[name]) hi[name] = v
    }
    function range(name) {
        if (!(name in lo)) return "-"
        if (sprintf("%.2f", lo[name]) == sprintf("%.2f", hi[name])) return sprintf("%.2f×", lo[name])
        return sprintf("%.2f–%.2f×", lo[name], hi[name])
    }
    function cpu(x) { return x == "" ? "-" : sprintf("%.2f", x) }
    function crange(name) {
        if (!(name in lo)) return "-"
        if (sprintf("%.2f", lo[name]) == sprintf("%.2f", hi[name])) return sprintf("%.2f", lo[name])
        return sprintf("%.2f–%.2f", lo[name], hi[name])
    }
    function urange(name) {
        if (!(name in lo)) return "-"
        if (sprintf("%+.0f", lo[name]) == sprintf("%+.0f", hi[name])) return sprintf("%+.0f µs", lo[name])
        return sprintf("%+.0f to %+.0f µs", lo[name], hi[name])
    }
    FILENAME == ARGV[1] { size[$1 SUBSEP $2] = $3; next }
    {
        k = $1 SUBSEP $2 SUBSEP $3
        vals[k "rps"] = vals[k "rps"] " " $5
        vals[k "p50"] = vals[k "p50"] " " $6
        vals[k "p99"] = vals[k "p99"] " " $7
        # CPU per request, in µs: Redis, the proxy (not for direct) and the two together.
        n = size[$1 SUBSEP $2]
        if (n > 0 && $8 ~ /^-?[0-9]+$/) {
            r = $8 / n / 1000
            vals[k "rcpu"] = vals[k "rcpu"] " " r
            if ($9 ~ /^-?[0-9]+$/) {
                vals[k "pcpu"] = vals[k "pcpu"] " " ($9 / n / 1000)
                r += $9 / n / 1000
            }
            vals[k "scpu"] = vals[k "scpu"] " " r
        }
        count[k]++
    }
    END {
        nc = split(cases, C, " "); split(labels, L, "|")
        nt = split(tests, T, " "); ng = split(targets, G, " ")
        # With --tls or --workers, one more column after ×twemproxy: ×ambassador (in the rows
        # of the extra ambassadors only). With --cluster, no twemproxy columns.
        tw = (twem == "true")
        tcol = (tls == "true")
        ne = split(extras, E, " "); for (e = 1; e <= ne; e++) extra[E[e]] = 1
        acol = (ne > 0)
        # With --workers, a second summary: the ambassador and each ambassador-wN.
        nw = split(wtargets, W, " ")
        if (nw > 0) { W[0] = "ambassador"; for (e = nw; e >= 0; e--) W[e + 1] = W[e]; nw++ }
        print "Case", "Test", "n", "Target", "Runs", "req/s", "×direct" (tw ? OFS "×twemproxy" : "") (acol ? OFS "×ambassador" : ""), \
            "p50 µs", "Δp50 µs", "p99 µs", "Δp99 µs", "Redis µs/req", "proxy µs/req", "sum µs/req"
        for (c = 1; c <= nc; c++) {
            for (t = 1; t <= nt; t++) {
                for (g = 1; g <= ng; g++) {
                    k = C[c] SUBSEP T[t] SUBSEP G[g]
                    rps[G[g]] = median(k "rps"); p50[G[g]] = median(k "p50"); p99[G[g]] = median(k "p99")
                    rcpu[G[g]] = median(k "rcpu"); pcpu[G[g]] = median(k "pcpu"); scpu[G[g]] = median(k "scpu")
                }
                for (g = 1; g <= ng; g++) {
                    x = G[g]
                    vd = (x == "direct") ? "1.00×" : ratio(rps[x], rps["direct"])
                    vt = (x == "twemproxy") ? "" : ratio(rps[x], rps["twemproxy"])
                    d50 = (x == "direct") ? "" : delta(p50[x], p50["direct"])
                    d99 = (x == "direct") ? "" : delta(p99[x], p99["direct"])
                    va = (x in extra) ? ratio(rps[x], rps["ambassador"]) : ""
                    if (rps[x] == "") vd = "-"
                    print L[c], (g == 1 ? toupper(T[t]) : ""), (g == 1 ? size[C[c] SUBSEP T[t]] : ""), x, \
                        count[C[c] SUBSEP T[t] SUBSEP x] + 0, (rps[x] == "" ? "failed" : sprintf("%.0f", rps[x])), \
                        vd (tw ? OFS vt : "") (acol ? OFS va : ""), us(p50[x]), d50, us(p99[x]), d99, \
                        cpu(rcpu[x]), (x == "direct" ? "—" : cpu(pcpu[x])), cpu(scpu[x])
                }
                if (rps["direct"] != "" && rps["ambassador"] != "") minmax(C[c] "ad", rps["ambassador"] / rps["direct"])
                if (rps["twemproxy"] != "" && rps["ambassador"] != "") minmax(C[c] "at", rps["ambassador"] / rps["twemproxy"])
                if (rps["direct"] != "" && rps["twemproxy"] != "") minmax(C[c] "td", rps["twemproxy"] / rps["direct"])
                if (p50["direct"] != "" && p50["ambassador"] != "") minmax(C[c] "a50", (p50["ambassador"] - p50["direct"]) * 1000)
                if (p50["direct"] != "" && p50["twemproxy"] != "") minmax(C[c] "t50", (p50["twemproxy"] - p50["direct"]) * 1000)
                minmax(C[c] "crd", rcpu["direct"])
                minmax(C[c] "cpa", pcpu["ambassador"]); minmax(C[c] "cra", rcpu["ambassador"])
                if (tw) { minmax(C[c] "cpt", pcpu["twemproxy"]); minmax(C[c] "crt", rcpu["twemproxy"]) }
                if (tcol && rps["ambassador"] != "" && rps["ambassador-tls"] != "")
                    minmax(C[c] "sa", rps["ambassador-tls"] / rps["ambassador"])
                if (tcol && p50["ambassador"] != "" && p50["ambassador-tls"] != "")
                    minmax(C[c] "s50", (p50["ambassador-tls"] - p50["ambassador"]) * 1000)
                for (e = 2; e <= nw; e++) {
                    x = W[e]
                    if (rps[x] == "") continue
                    if (rps["direct"] != "") minmax(C[c] x "/d", rps[x] / rps["direct"])
                    if (rps["twemproxy"] != "") minmax(C[c] x "/t", rps[x] / rps["twemproxy"])
                    if (rps["ambassador"] != "") minmax(C[c] x "/a", rps[x] / rps["ambassador"])
                    if (p50["direct"] != "" && p50[x] != "") minmax(C[c] x "/50", (p50[x] - p50["direct"]) * 1000)
                }
            }
        }
        if (nw > 0) {
            print "Case", "Target", "worker_threads", "×direct", "×twemproxy", "×ambassador", "Δp50 vs direct" > wsummary
            for (c = 1; c <= nc; c++)
                for (e = 1; e <= nw; e++) {
                    x = W[e]
                    if (e == 1)
                        print L[c], x, main_workers, range(C[c] "ad"), range(C[c] "at"), "", urange(C[c] "a50") > wsummary
                    else
                        print "", x, substr(x, length("ambassador-w") + 1), range(C[c] x "/d"), range(C[c] x "/t"), \
                            range(C[c] x "/a"), urange(C[c] x "/50") > wsummary
                }
        }
        print "Case", "ambassador/direct" (tw ? OFS "ambassador/twemproxy" OFS "twemproxy/direct" : ""), "ambassador Δp50" \
            (tw ? OFS "twemproxy Δp50" : "") \
            (tcol ? OFS "ambassador-tls/ambassador" OFS "ambassador-tls Δp50 vs ambassador" : "") \
            OFS "Redis µs/req (direct)" OFS "ambassador µs/req" OFS "Redis µs/req (via ambassador)" \
            (tw ? OFS "twemproxy µs/req" OFS "Redis µs/req (via twemproxy)" : "") > summary
        for (c = 1; c <= nc; c++)
            print L[c], range(C[c] "ad") (tw ? OFS range(C[c] "at") OFS range(C[c] "td") : ""), urange(C[c] "a50") \
                (tw ? OFS urange(C[c] "t50") : "") \
                (tcol ? OFS range(C[c] "sa") OFS urange(C[c] "s50") : "") \
                OFS crange(C[c] "crd") OFS crange(C[c] "cpa") OFS crange(C[c] "cra") \
                (tw ? OFS crange(C[c] "cpt") OFS crange(C[c] "crt") : "") > summary
    }
' "$sizes" "$results" >"$table"

# render_text GROUPED LEFT FILE: aligned columns, those listed in LEFT (column numbers,
# space-separated) left-aligned; with GROUPED=1, column 1 (the case) becomes a heading when it
# changes.
render_text() {
    LC_ALL=C awk -F'\t' -v grouped="$1" -v leftcols="$2" '
        BEGIN { n = split(leftcols, a, " "); for (i = 1; i <= n; i++) isleft[a[i]] = 1 }
        # Display width of a string (UTF-8: count the bytes that do not continue a character).
        function w(s) { gsub(/[\200-\277]/, "", s); return length(s) }
        function pad(s, n, left,    p) { p = sprintf("%" (n - w(s) > 0 ? n - w(s) : 0) "s", ""); return left ? s p : p s }
        { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (w($i) > width[i]) width[i] = w($i) } ; nf[NR] = NF }
        END {
            first = grouped ? 2 : 1
            for (r = 1; r <= NR; r++) {
                if (grouped && r > 1 && cell[r, 1] != prev) { printf "\n%s\n", cell[r, 1]; prev = cell[r, 1] }
                out = ""
                for (i = first; i <= nf[r]; i++) {
                    left = (i in isleft)
                    out = out (i > first ? "  " : "") pad(cell[r, i], width[i], left)
                }
                sub(/ +$/, "", out)
                print out
            }
        }
    ' "$3"
}

# Markdown rendering: a pipe table, the text columns left-aligned.
render_markdown() {
    awk -F'\t' '
        {
            out = "|"
            for (i = 1; i <= NF; i++) out = out " " ($i == "" ? " " : $i) " |"
            print out
            if (NR == 1) {
                out = "|"
                for (i = 1; i <= NF; i++) out = out ($i == "Case" || $i == "Test" || $i == "Target" ? " --- |" : " ---: |")
                print out
            }
        }
    ' "$1"
}

about="$tmp/about.tsv"
{
    printf 'date\t%s\n' "$started"
    printf 'machine\t%s CPUs (nproc), %s, %s\n' "$(nproc)" "$cpu_model" "$(uname -srm)"
    printf 'load average\t%s at the start, %s at the end\n' "$load_start" "$load_end"
    if $cluster; then
        printf 'versions\tredis-server %s, redis-benchmark %s, rustc %s\n' \
            "$redis_version" "${bench_version:-?}" "${rustc_version:-?}"
    elif $tls; then
        printf 'versions\tredis-server %s, redis-benchmark %s, nutcracker %s, rustc %s, openssl %s\n' \
            "$redis_version" "${bench_version:-?}" "${twem_version:-?}" "${rustc_version:-?}" "${openssl_version:-?}"
    else
        printf 'versions\tredis-server %s, redis-benchmark %s, nutcracker %s, rustc %s\n' \
            "$redis_version" "${bench_version:-?}" "${twem_version:-?}" "${rustc_version:-?}"
    fi
    if $cluster; then
        printf 'cluster\t%s masters, no replicas, on 127.0.0.1 (ports %s), requirepass, cluster-node-timeout %s ms, save "", appendonly no; redis-cli --cluster create --cluster-replicas 0\n' \
            "$cluster_size" "$(printf '%s, ' "${node_ports[@]}" | sed 's/, $//')" "$cluster_node_timeout_ms"
        printf 'ambassador\tgit %s, cargo build --release, config.toml with listen/metrics addresses, [upstream] mode = "cluster", address = the first master, addresses = the other %s, the password file%s, no client password; worker_threads = %s\n' \
            "$git_rev" "$((cluster_size - 1))" "$drain_note" "$main_workers_shown"
    else
        printf 'ambassador\tgit %s, cargo build --release, config.toml with listen/upstream/metrics addresses%s, no client password\n' \
            "$git_rev" "$drain_note"
        printf 'twemproxy\tone pool, redis: true, redis_auth, server_connections: 1, preconnect\n'
    fi
    if $tls; then
        printf 'TLS upstream\tambassador-tls: the same build and config, upstream rediss:// to the same redis-server'"'"'s TLS port (tls-auth-clients no), tls_ca_file = a throwaway CA; P-256 certificate for IP 127.0.0.1\n'
    fi
    if [ "${#workers[@]}" -gt 0 ]; then
        printf 'workers\tambassador: [runtime] worker_threads = %s; %s: the same build and config but worker_threads = %s (1: tokio'"'"'s current-thread scheduler; N > 1: multi-thread, N workers)\n' \
            "$main_workers_shown" "$(printf 'ambassador-w%s, ' "${workers[@]}" | sed 's/, $//')" "$workers_list"
    fi
    printf 'mode\t%s: %s repetitions, medians; runs interleaved (%s back to back, order rotated per repetition); %s s of benchmark runs\n' \
        "$mode" "$reps" "$(printf '%s, ' "${targets[@]}" | sed 's/, $//')" "$bench_secs"
    if [ "$cpu_source" = schedstat ]; then
        printf 'CPU time\tper process, the sum over its threads of /proc/PID/task/TID/schedstat field 1 (ns on a CPU, user + kernel), read just before and just after each run\n'
    else
        printf 'CPU time\tper process, utime + stime from /proc/PID/stat (all threads, user + kernel; clock ticks of %s ms: coarse, this kernel has no schedstat), read just before and just after each run\n' \
            "$(awk -v t="$clk_tck" 'BEGIN { printf "%g", 1000 / t }')"
    fi
    if $cluster; then
        printf 'command\tdirect: redis-benchmark --cluster -h 127.0.0.1 -p FIRST_MASTER -a PASSWORD -c C -P P -n N -r %s -t TEST --csv; ambassador: the same without --cluster and -a, at its port\n' "$keyspace"
    else
        printf 'command\tredis-benchmark -h 127.0.0.1 -p PORT [-a PASSWORD] -c C -P P -n N -r %s -t TEST --csv\n' "$keyspace"
    fi
}>"$about"

title="redis-ambassador vs direct Redis vs twemproxy"
if $cluster; then
    title="redis-ambassador (cluster mode) vs redis-benchmark --cluster, straight at a ${cluster_size}-master Redis Cluster"
fi
if $tls; then
    title="$title, and redis-ambassador with a TLS upstream"
fi
if [ "${#workers[@]}" -gt 0 ]; then
    title="$title, and with worker_threads = $workers_list"
fi

# ratio_note UNIT: with --tls or --workers, what the ×ambassador column is.
ratio_note() {
    local whose=() what=()
    if $tls; then
        whose+=(ambassador-tls)
        what+=("ambassador-tls: TLS upstream / plain TCP")
    fi
    if [ "${#workers[@]}" -gt 0 ]; then
        whose+=(ambassador-wN)
        what+=("ambassador-wN: worker_threads = N / ${main_workers:-0}")
    fi
    case "${#whose[@]}" in
        0) ;;
        1) echo "×ambassador (${whose[0]} only): its $1 divided by the ambassador's (${what[0]#*: })." ;;
        *) echo "×ambassador (${whose[0]} and ${whose[1]} only): its $1 divided by the ambassador's (${what[0]}; ${what[1]})." ;;
    esac
}
workers_heading="Worker threads (range over the $tests_word tests; the ambassador's worker_threads is config.toml's):"
# What the CPU columns are.
cpu_note() {
    local redis="redis-server's"
    if $cluster; then
        redis="the $cluster_size masters' (summed)"
    fi
    echo "CPU per request, in µs: the CPU time (user + kernel) used during the run divided by its n, median over the repetitions; Redis: $redis; proxy: the target's proxy process; sum: the two, per run."
}
# What the ratio columns are (UNIT: req/s or requests/s).
ratios_note() {
    if $cluster; then
        echo "Median over the repetitions. ×direct: this target's $1 divided by direct's (redis-benchmark --cluster at the masters)."
    else
        echo "Median over the repetitions. ×direct / ×twemproxy: this target's $1 divided by theirs."
    fi
}

print_report() {
    echo "$title (redis-benchmark, $mode mode)"
    echo
    LC_ALL=C awk -F'\t' '{ printf "%-13s %s\n", $1 ":", $2 }' "$about"
    echo
    ratios_note "req/s"
    ratio_note "req/s"
    echo "Latencies in microseconds (redis-benchmark's per-request latency); Δ: minus direct's."
    cpu_note
    render_text 1 "2 4" "$table"
    echo
    echo "Summary (range over the $tests_word tests):"
    echo
    render_text 0 "1" "$summary"
    if [ "${#workers[@]}" -gt 0 ]; then
        echo
        echo "$workers_heading"
        echo
        render_text 0 "1 2 3" "$summary_workers"
    fi
}

step "Results"
echo
print_report

if [ -n "$out_file" ]; then
    {
        echo "## $title ($mode mode)"
        echo
        awk -F'\t' '{ printf "- **%s**: %s\n", $1, $2 }' "$about"
        echo
        ratios_note "requests/s"
        ratio_note "requests/s"
        echo "Latencies in µs (redis-benchmark's per-request latency); Δ: minus direct's."
        cpu_note
        echo
        render_markdown "$table"
        echo
        echo "Summary (range over the $tests_word tests):"
        echo
        render_markdown "$summary"
        if [ "${#workers[@]}" -gt 0 ]; then
            echo
            echo "$workers_heading"
            echo
            render_markdown "$summary_workers"
        fi
    } >"$out_file"
    echo
    echo "Markdown written to $out_file"
fi

echo
echo "Total time: $SECONDS s (benchmark runs: $bench_secs s)."
if [ "$failures" -ne 0 ]; then
    die "$failures run(s) failed (see the warnings above); their medians use the runs that succeeded"
fi

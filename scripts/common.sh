# shellcheck shell=bash
# Helpers shared by scripts/test, scripts/demo and the benchmarks in benches/. Sourced, not run.

# Print a step header.
step() {
    printf '\n==> %s\n' "$*"
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# Install redis-server and redis-cli from Debian's packages if either is missing.
ensure_redis() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "redis-server/redis-cli not found and apt-get is not available: install Redis (>= 7) yourself"
    step "Installing redis-server and redis-tools (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
    command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after apt-get install"
    command -v redis-cli >/dev/null 2>&1 || die "redis-cli still not on PATH after apt-get install"
}

# python3 >= 3.11 (tomllib) from Debian's packages when missing: scripts/layers and the
# deployment lint need it.
ensure_python3() {
    if ! command -v python3 >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || die "python3 (>= 3.11) is needed: install it"
        step "Installing python3 (apt-get)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    fi
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "python3 >= 3.11 is needed (tomllib)"
}

# Make sure cargo is on PATH (rustup installs put it in ~/.cargo/bin).
ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -f "${HOME:-/root}/.cargo/env" ]; then
        # shellcheck source=/dev/null
        . "${HOME:-/root}/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 \
        || die "cargo not found on PATH (and no ~/.cargo/env): install Rust with rustup first"
    # rustup brings no C linker; a fresh Debian has none either.
    if ! command -v cc >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 \
            || die "no C linker (cc) found and apt-get is not available: install gcc yourself"
        step "Installing a C linker (gcc, libc6-dev; apt-get)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
        command -v cc >/dev/null 2>&1 || die "cc still not on PATH after apt-get install"
    fi
}

# --- for benches/compare.sh and benches/memory.sh ------------------------------------------
#
# These use globals that the bench script sets: bench_name (compare, memory: it names the
# temporary directory, the readiness probe key and the clean-up message), repo_root (the
# repository, also the current directory), tmp (the temporary directory), and the ones set here: ambassador, password_file, password, redis_port, redis_pid,
# has_drain. (shellcheck -x sees those globals from the bench scripts, not from this file on
# its own: hence the SC2154 directives.)

# True when nothing can be bound / is listening on 127.0.0.1:$1.
port_is_free() {
    local port=$1
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$port" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
    else
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 1
        fi
        return 0
    fi
}

# Print a free TCP port on 127.0.0.1, different from the ones given as arguments: one of
# 20000 + (0 to $free_port_span - 1) (default 40000; $RANDOM stops at 32767).
free_port() {
    local port taken tries=0
    while [ "$tries" -lt 200 ]; do
        tries=$((tries + 1))
        port=$((20000 + RANDOM % ${free_port_span:-40000}))
        taken=false
        for t in "$@"; do
            [ "$port" = "$t" ] && taken=true
        done
        if ! $taken && port_is_free "$port"; then
            echo "$port"
            return 0
        fi
    done
    die "could not find a free TCP port on 127.0.0.1"
}

# Print the last lines of a log file, to explain a failure.
show_log() {
    local name=$1 file=$2
    if [ -s "$file" ]; then
        printf '\n--- last lines of the %s log ---\n' "$name" >&2
        tail -n 30 "$file" >&2
        printf -- '---\n' >&2
    fi
}

# Install, from Debian's packages, whichever of redis-server and redis-tools (redis-cli,
# redis-benchmark) is missing, together with the packages given as arguments (the caller's
# own, already found missing).
install_bench_packages() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    if ! command -v redis-cli >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
        missing+=(redis-tools)
    fi
    missing+=("$@")
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 \
        || die "missing ${missing[*]} and apt-get is not available: install them yourself"
    step "Installing ${missing[*]} (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after apt-get install"
    command -v redis-benchmark >/dev/null 2>&1 || die "redis-benchmark still not on PATH after apt-get install"
}

# Wait (at most 10 s) until `redis-cli -p PORT SET …` answers OK; $1 is the pid to watch.
# The password, if any, goes through the environment (REDISCLI_AUTH), never the command line.
# shellcheck disable=SC2154  # bench_name: set by the bench script
wait_ready() {
    local pid=$1 port=$2 auth=$3 reply
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        if [ -n "$auth" ]; then
            reply=$(REDISCLI_AUTH="$auth" redis-cli -h 127.0.0.1 -p "$port" SET "$bench_name:probe" 1 2>/dev/null) || true
        else
            reply=$(redis-cli -h 127.0.0.1 -p "$port" SET "$bench_name:probe" 1 2>/dev/null) || true
        fi
        [ "$reply" = OK ] && return 0
        sleep 0.1
    done
    return 1
}

# Stop one process we started: TERM, up to 10 s, then KILL.
stop_pid() {
    local pid=$1
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# On exit: stop the processes whose pids are in the variables named in cleanup_pid_vars (in
# that order), remove $tmp, and say so when redis-server was started. Set up by
# trap_bench_cleanup.
# shellcheck disable=SC2317,SC2154  # invoked through the EXIT trap; cleanup_pid_vars: the bench script's
bench_cleanup() {
    local status=$? var
    trap - EXIT INT TERM
    for var in "${cleanup_pid_vars[@]}"; do
        stop_pid "${!var}"
    done
    if [ -n "$tmp" ] && [ -d "$tmp" ]; then
        rm -rf -- "$tmp"
    fi
    if [ -n "$redis_pid" ]; then
        echo "$bench_name: stopped what it started, removed its temporary directory" >&2
    fi
    exit "$status"
}
trap_bench_cleanup() {
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# Build the ambassador (cargo build --release) and set $ambassador to its binary.
# shellcheck disable=SC2154  # repo_root: set by the bench script
build_ambassador() {
    step "Building redis-ambassador (cargo build --release)"
    cargo build --release
    # Where cargo put it: CARGO_TARGET_DIR when set (relative to the repository), else target/.
    local target_dir=${CARGO_TARGET_DIR:-target}
    case "$target_dir" in /*) ;; *) target_dir="$repo_root/$target_dir" ;; esac
    ambassador="$target_dir/release/redis-ambassador"
    [ -x "$ambassador" ] || die "$ambassador was not built"
}

# Set $tmp to a new temporary directory (mode 700).
make_bench_tmp() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/redis-ambassador-$bench_name.XXXXXX")
    chmod 700 "$tmp"
}

# A random Redis password in $tmp/redis-password (0600), and $tmp/redis.conf (0600) that sets
# it: the password goes into redis.conf, never onto redis-server's command line. Sets
# password_file and password.
make_redis_password() {
    password_file="$tmp/redis-password"
    (
        umask 077
        head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n' >"$password_file"
        echo >>"$password_file"
        { printf 'requirepass '; cat "$password_file"; } >"$tmp/redis.conf"
    )
    password=$(<"$password_file")
}

# Start redis-server on $redis_port with $tmp/redis.conf (and the extra arguments given), set
# redis_pid, and wait until it answers.
# shellcheck disable=SC2154  # redis_port: set by the bench script
start_redis() {
    redis-server "$tmp/redis.conf" \
        --port "$redis_port" --bind 127.0.0.1 \
        --save "" --appendonly no \
        --dir "$tmp" --logfile "$tmp/redis.log" \
        "$@" \
        </dev/null >/dev/null 2>&1 &
    redis_pid=$!
    if ! wait_ready "$redis_pid" "$redis_port" "$password"; then
        show_log redis-server "$tmp/redis.log"
        die "redis-server did not come up on 127.0.0.1:$redis_port"
    fi
}

# derive_config FILE LISTEN UPSTREAM METRICS [CA_FILE [MAX_CLIENTS]]: write FILE, the ambassador's
# config, from the repo's config.toml (same keys; only these values change), and check it
# (--check):
#   [listen]   address        -> LISTEN
#   [listen]   max_clients    -> MAX_CLIENTS, when given
#   [upstream] address        -> UPSTREAM
#   [upstream] password_file  -> $password_file (any password_* line is replaced)
#   [upstream] tls_ca_file    -> CA_FILE, when given (replaces any such line)
#   [metrics]  address        -> METRICS
#   [shutdown] drain_delay_ms -> 0, when config.toml has that key (so clean-up is quick)
# Sets has_drain (whether config.toml has drain_delay_ms).
derive_config() {
    local file=$1 listen=$2 upstream=$3 metrics=$4 cafile=${5:-} maxclients=${6:-} want check_out
    local wants=()
    has_drain=false
    if grep -Eq '^[[:space:]]*drain_delay_ms[[:space:]]*=' config.toml; then
        has_drain=true
    fi
    awk -v listen="$listen" \
        -v upstream="$upstream" \
        -v pwfile="$password_file" \
        -v metrics="$metrics" \
        -v cafile="$cafile" \
        -v maxclients="$maxclients" '
        /^[[:space:]]*\[[^]]*\][[:space:]]*(#.*)?$/ {
            section = $0
            sub(/^[[:space:]]*\[/, "", section)
            sub(/\].*$/, "", section)
        }
        section == "upstream" && /^[[:space:]]*#?[[:space:]]*password_(file|env)[[:space:]]*=/ { next }
        section == "upstream" && cafile != "" && /^[[:space:]]*tls_ca_file[[:space:]]*=/ { next }
        section == "shutdown" && /^[[:space:]]*drain_delay_ms[[:space:]]*=/ { print "drain_delay_ms = 0"; next }
        section == "listen" && maxclients != "" && /^[[:space:]]*max_clients[[:space:]]*=/ { print "max_clients = " maxclients; next }
        /^[[:space:]]*address[[:space:]]*=/ {
            if (section == "listen")   { print "address = \"" listen "\"";   next }
            if (section == "metrics")  { print "address = \"" metrics "\"";  next }
            if (section == "upstream") {
                print "address = \"" upstream "\""
                print "password_file = \"" pwfile "\""
                if (cafile != "") print "tls_ca_file = \"" cafile "\""
                next
            }
        }
        { print }
    ' config.toml >"$file"
    wants=("address = \"$listen\""
        "address = \"$upstream\""
        "password_file = \"$password_file\""
        "address = \"$metrics\"")
    if [ -n "$cafile" ]; then
        wants+=("tls_ca_file = \"$cafile\"")
    fi
    if [ -n "$maxclients" ]; then
        wants+=("max_clients = $maxclients")
    fi
    if $has_drain; then
        wants+=("drain_delay_ms = 0")
    fi
    for want in "${wants[@]}"; do
        grep -qF "$want" "$file" || die "could not derive the ambassador's config from config.toml (missing: $want)"
    done
    if ! check_out=$("$ambassador" --config "$file" --check 2>&1); then
        printf '%s\n' "$check_out" >&2
        die "redis-ambassador --check rejected the config derived from config.toml ($file)"
    fi
}

# spawn_ambassador PIDVAR CONFIG PORT LOG: start $ambassador with CONFIG (its output appended
# to LOG), put its pid in the variable named PIDVAR, and wait until it answers on
# 127.0.0.1:PORT; return 1 when it does not.
spawn_ambassador() {
    local pidvar=$1 config=$2 port=$3 log=$4
    "$ambassador" --config "$config" </dev/null >>"$log" 2>&1 &
    printf -v "$pidvar" '%s' "$!"
    wait_ready "$!" "$port" ""
}

# start_ambassador PIDVAR CONFIG PORT LOG: the same, and die (with the log) when it does not
# come up.
start_ambassador() {
    spawn_ambassador "$@" && return 0
    show_log redis-ambassador "$4"
    die "redis-ambassador did not come up on 127.0.0.1:$3"
}

# The ambassador's git revision, with "+ uncommitted changes" when src or Cargo.* differ.
ambassador_git_rev() {
    local rev
    rev=$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ "$rev" != unknown ] && [ -n "$(git -C "$repo_root" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
        rev="$rev + uncommitted changes"
    fi
    echo "$rev"
}

# The CPU model from /proc/cpuinfo, or the machine name (uname -m).
cpu_model_name() {
    local model
    model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    echo "${model:-$(uname -m)}"
}

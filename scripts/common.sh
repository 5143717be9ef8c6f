# shellcheck shell=bash
# Helpers shared by scripts/test and scripts/demo. Sourced, not run.

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

# Make sure cargo is on PATH (rustup installs put it in ~/.cargo/bin).
ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -f "${HOME:-/root}/.cargo/env" ]; then
        # shellcheck source=/dev/null
        . "${HOME:-/root}/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 \
        || die "cargo not found on PATH (and no ~/.cargo/env): install Rust with rustup first"
}

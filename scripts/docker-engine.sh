#!/usr/bin/env bash
# Make a Docker engine answer on this machine (idempotent): install Debian's docker.io,
# docker-compose (v1) and debootstrap if missing, start `dockerd` if it does not answer (no
# systemd needed), and wait until `docker info` works.
#
#   scripts/docker-engine.sh            # prints one line: ready / why not (exit 0 / 1)
#
# Needs root for the install and for dockerd; an engine that already answers is simply used.
# Environment: BITFED_DOCKER_WAIT (seconds to wait for dockerd, default 60),
# BITFED_DOCKERD_LOG (default /tmp/bitfed-dockerd.log).
set -uo pipefail

WAIT="${BITFED_DOCKER_WAIT:-60}"
LOG="${BITFED_DOCKERD_LOG:-/tmp/bitfed-dockerd.log}"
PACKAGES=(docker.io docker-compose debootstrap)

fail() {
    echo "docker-engine.sh: $*" >&2
    exit 1
}

engine_answers() {
    command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

missing_tools() {
    local tool
    for tool in dockerd docker docker-compose debootstrap; do
        command -v "$tool" >/dev/null 2>&1 || echo "$tool"
    done
}

install_packages() {
    [ "$(id -u)" -eq 0 ] || fail "not root: install ${PACKAGES[*]} and start dockerd by hand"
    command -v apt-get >/dev/null 2>&1 || fail "no apt-get: install Docker and docker-compose by hand"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$LOG" 2>&1; then
        apt-get update -q >>"$LOG" 2>&1
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$LOG" 2>&1 ||
            fail "apt-get install ${PACKAGES[*]} failed (see $LOG)"
    fi
}

start_dockerd() {
    [ "$(id -u)" -eq 0 ] || fail "the Docker engine does not answer and we are not root to start dockerd"
    if ! pgrep -x dockerd >/dev/null 2>&1; then
        # setsid: dockerd outlives this script and the CI step that called it.
        setsid dockerd >>"$LOG" 2>&1 </dev/null &
    fi
    local waited=0
    until engine_answers; do
        [ "$waited" -ge "$WAIT" ] && fail "dockerd did not answer within ${WAIT}s (see $LOG)"
        sleep 1
        waited=$((waited + 1))
    done
}

if [ -n "$(missing_tools)" ]; then
    install_packages
    [ -z "$(missing_tools)" ] || fail "still missing after install: $(missing_tools | tr '\n' ' ')"
fi
engine_answers || start_dockerd
echo "docker-engine.sh: ready: engine $(docker version --format '{{.Server.Version}}' 2>/dev/null)," \
    "$(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /')"

#!/usr/bin/env bash
# Build the repository's Dockerfile without an image registry or a package index reachable
# from containers (`make image-offline`):
#
#   1. base image bitfed-base:bookworm from Debian's packages (debootstrap minbase + python3,
#      python3-venv, ca-certificates; /usr/bin/python -> python3), once;
#   2. a wheelhouse on the host, build/wheelhouse (pip wheel of pyproject's dependencies and the
#      image's extras with constraints.txt, the CPU torch wheel pip finds here, hatchling and
#      editables for the editable install), refreshed when pyproject.toml/constraints.txt change;
#   3. the real Dockerfile with --build-arg BASE_IMAGE=bitfed-base:bookworm, PIP_NO_INDEX=1 and
#      PIP_FIND_LINKS=http://127.0.0.1:PORT/ (the wheelhouse served on loopback for this build
#      only, `--network host`): no wheel ends up in an image layer.
#
# The image is tagged bitfed:<version> (what compose.yaml runs) and bitfed:src-<hash>, where
# <hash> covers the Dockerfile, .dockerignore, constraints.txt, pyproject.toml, README.md, conf/
# and every package pyproject lists; an image with that tag is reused, not rebuilt.
# The last line printed is the source tag (tests/test_compose_e2e.py reads it).
#
# Environment: BITFED_EXTRAS (extras installed in the image, default "data"),
# BITFED_BUILD_CPU_SHARES (CPU weight of the build's containers, e.g. 2 to yield to other work;
# default: Docker's 1024),
# BITFED_DEBIAN_MIRROR (default: the first Debian URI in /etc/apt/sources*),
# BITFED_WHEEL_PORT (default 38017; the next free one of the ten after it when taken: the port is
# part of a build argument, so a fixed one keeps Docker's layer cache), BITFED_PYTHON (host
# Python 3.11 with pip; default .venv). Two builds at once (e.g. amd64 and arm64) each serve
# their own wheelhouse.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE="bitfed-base:bookworm"
EXTRAS="${BITFED_EXTRAS-data}"
WHEELHOUSE="build/wheelhouse"
PY="${BITFED_PYTHON:-}"
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python; } || PY=python3
PORT="${BITFED_WHEEL_PORT:-38017}"

say() { echo "offline-image.sh: $*" >&2; }
fail() {
    say "$*"
    exit 1
}

command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 ||
    fail "no Docker engine answers; run scripts/docker-engine.sh first (as root)"

debian_mirror() {
    [ -n "${BITFED_DEBIAN_MIRROR:-}" ] && { echo "$BITFED_DEBIAN_MIRROR"; return; }
    # deb822 (*.sources: "URIs: …") or one-line (*.list: "deb URI suite …"), skipping -security
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
        2>/dev/null | sed -n -e 's/^URIs:[[:space:]]*//p' -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?//p' |
        tr ' ' '\n' | grep -E '^https?://.*/debian/?$' | head -n1
}

make_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        return
    fi
    command -v debootstrap >/dev/null 2>&1 || fail "debootstrap missing; run scripts/docker-engine.sh"
    local mirror rootfs
    mirror="$(debian_mirror)"
    [ -n "$mirror" ] || fail "no Debian mirror in /etc/apt/sources*; set BITFED_DEBIAN_MIRROR"
    rootfs="$(mktemp -d /tmp/bitfed-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' RETURN
    say "debootstrap bookworm from $mirror (a few minutes, once)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 ||
        fail "debootstrap failed (see $rootfs.log)"
    rm -f "$rootfs.log"
    ln -sf python3 "$rootfs/usr/bin/python"
    # what python:slim drops too: package lists and caches, docs, man pages, locales
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    say "base image $BASE_IMAGE: $(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes"
}

# What the image pip-installs: pyproject's dependencies plus the chosen extras.
requirements() {
    "$PY" - "$EXTRAS" <<'EOF'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = [e for e in sys.argv[1].split(",") if e]
optional = project.get("optional-dependencies", {})
for name in extras:
    if name not in optional:
        sys.exit(f"BITFED_EXTRAS: no extra {name!r} in pyproject.toml; use one of {sorted(optional)}")
print("\n".join(project["dependencies"] + [r for e in extras for r in optional[e]]))
print("hatchling\neditables")
EOF
}

make_wheelhouse() {
    local reqs stamp
    mkdir -p "$WHEELHOUSE"
    reqs="$WHEELHOUSE/requirements.txt"
    requirements >"$reqs.new"
    stamp="$WHEELHOUSE/.stamp-$(cat "$reqs.new" constraints.txt | sha256sum | cut -c1-16)"
    mv "$reqs.new" "$reqs"
    [ -f "$stamp" ] && return
    say "pip wheel into $WHEELHOUSE (extras: ${EXTRAS:-none})"
    # --find-links the wheelhouse itself: wheels already there are not fetched again.
    "$PY" -m pip wheel --quiet --disable-pip-version-check -c constraints.txt \
        --find-links "$WHEELHOUSE" -w "$WHEELHOUSE" -r "$reqs" ||
        fail "pip wheel failed; is the package index reachable from this host?"
    ls "$WHEELHOUSE"/torch-*+cpu-*.whl >/dev/null 2>&1 ||
        fail "no CPU torch wheel in $WHEELHOUSE (pip chose another build of torch)"
    touch "$stamp"
}

source_hash() {
    "$PY" - <<'EOF'
import hashlib, pathlib, tomllib
root = pathlib.Path(".")
packages = tomllib.load(open("pyproject.toml", "rb"))["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
files = [root / n for n in ("Dockerfile", ".dockerignore", "constraints.txt", "pyproject.toml", "README.md")]
for folder in ["conf", *packages]:
    files += sorted(p for p in (root / folder).rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
digest = hashlib.sha256()
for path in files:
    digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
print(digest.hexdigest()[:16])
EOF
}

# Serve the wheelhouse on 127.0.0.1:PORT, or the first of the next ten ports where this build's
# own server answers (a token file only it serves: another server on a port is never taken).
serve_wheelhouse() {
    TOKEN=".served-by-$$-$RANDOM$RANDOM"
    echo "$TOKEN" >"$WHEELHOUSE/$TOKEN"
    trap 'kill "${SERVER_PID:-}" 2>/dev/null || true; rm -f "$WHEELHOUSE/$TOKEN"' EXIT
    local first="$PORT"
    for PORT in $(seq "$first" $((first + 10))); do
        "$PY" -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$PORT" >/dev/null 2>&1 &
        SERVER_PID=$!
        for _ in $(seq 20); do
            if "$PY" -c "import sys, urllib.request as u
sys.exit(u.urlopen('http://127.0.0.1:$PORT/$TOKEN', timeout=1).read().strip() != b'$TOKEN')" \
                2>/dev/null; then
                return
            fi
            kill -0 "$SERVER_PID" 2>/dev/null || break # port taken: our server exited
            sleep 0.5
        done
        kill "$SERVER_PID" 2>/dev/null || true
        say "127.0.0.1:$PORT is taken or did not answer; trying the next port"
    done
    fail "cannot serve the wheelhouse on 127.0.0.1:$first..$PORT (set BITFED_WHEEL_PORT)"
}

VERSION="$("$PY" -c "import tomllib; print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")"
TAG="bitfed:src-$(source_hash)${EXTRAS:+-${EXTRAS//,/-}}"
if docker image inspect "$TAG" >/dev/null 2>&1; then
    say "reusing $TAG (sources unchanged)"
    docker tag "$TAG" "bitfed:$VERSION"
    echo "$TAG"
    exit 0
fi
make_base_image
make_wheelhouse
serve_wheelhouse
say "docker build $TAG"
started=$(date +%s)
LOG="build/offline-image.log"
SHARES=()
[ -z "${BITFED_BUILD_CPU_SHARES:-}" ] || SHARES=(--cpu-shares "$BITFED_BUILD_CPU_SHARES")
docker build --network host "${SHARES[@]}" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg PIP_NO_INDEX=1 \
    --build-arg PIP_FIND_LINKS="http://127.0.0.1:$PORT/" \
    --build-arg BITFED_EXTRAS="$EXTRAS" \
    --label bitfed.source-tag="$TAG" \
    -t "$TAG" -t "bitfed:$VERSION" . >"$LOG" 2>&1 || fail "docker build failed; see $LOG"
say "built $TAG in $(($(date +%s) - started)) s: $(docker image inspect -f '{{.Size}}' "$TAG") bytes"
echo "$TAG"

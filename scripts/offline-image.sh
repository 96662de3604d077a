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
# The last line printed is the source tag (tests/test_compose_e2e.py reads it). A build also
# writes build/offline-image[-arm64].json: its tag, platform, seconds, size in bytes and date.
#
# BITFED_PLATFORM=arm64 (`make image-offline-arm64`) builds the same Dockerfile for linux/arm64
# under qemu-user (binfmt qemu-aarch64 with the F flag, as scripts/test-arm64.sh registers it):
# base image bitfed-base:bookworm-arm64 (from build/arm64/rootfs when scripts/test-arm64.sh made
# it, else debootstrap --arch=arm64), wheelhouse build/wheelhouse-arm64 (aarch64 wheels resolved
# by scripts/pip_aarch64.py with constraints-device-aarch64.txt, plus pure-Python wheels built
# here for sdist-only packages), `docker build --platform linux/arm64 --build-arg
# TARGETARCH=arm64`; tags bitfed:<version>-arm64 and bitfed:src-<hash>-<extras>-arm64. The build
# runs pip under emulation: expect about half an hour, once. Docker 20.10's classic builder (no
# buildx here) fails `docker build --platform linux/arm64` at the first COPY after a RUN (it
# labels each committed step with the host's arch, then asks for an arm64 one), so the arm64
# build runs without --platform (the base image is arm64, its RUN steps run under qemu) and the
# finished image is relabelled linux/arm64/v8 (docker save, config edited, docker load: same
# layers). The unrelabelled build stays tagged bitfed-build-cache:<version>-arm64 so that a
# source change reuses its layers (torch is not reinstalled).
#
# Environment: BITFED_PLATFORM (amd64, the default, or arm64),
# BITFED_EXTRAS (extras installed in the image, default "data"),
# BITFED_BUILD_CPU_SHARES (CPU weight of the build's containers, e.g. 2 to yield to other work;
# default: Docker's 1024),
# BITFED_DEBIAN_MIRROR (default: the first Debian URI in /etc/apt/sources*),
# BITFED_WHEEL_PORT (default 38017, arm64 38018; the next free one of the ten after it when
# taken: the port is part of a build argument, so a fixed one keeps Docker's layer cache),
# BITFED_PYTHON (host Python 3.11 with pip; default .venv). Two builds at once (e.g. amd64 and
# arm64) each serve their own wheelhouse.
set -euo pipefail
cd "$(dirname "$0")/.."

PLATFORM="${BITFED_PLATFORM:-amd64}"
EXTRAS="${BITFED_EXTRAS-data}"
case "$PLATFORM" in
amd64)
    BASE_IMAGE="bitfed-base:bookworm"
    WHEELHOUSE="build/wheelhouse"
    DEFAULT_PORT=38017
    CONSTRAINTS="constraints.txt"
    SUFFIX=""
    ;;
arm64)
    BASE_IMAGE="bitfed-base:bookworm-arm64"
    WHEELHOUSE="build/wheelhouse-arm64"
    DEFAULT_PORT=38018 # its own layer cache key, and no race with an amd64 build
    CONSTRAINTS="constraints-device-aarch64.txt"
    SUFFIX="-arm64"
    ;;
*)
    echo "offline-image.sh: BITFED_PLATFORM=$PLATFORM: use amd64 or arm64" >&2
    exit 1
    ;;
esac
PORT="${BITFED_WHEEL_PORT:-$DEFAULT_PORT}"
PY="${BITFED_PYTHON:-}"
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python; } || PY=python3

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

# Cleanup (what python:slim drops too: package lists and caches, docs, man pages, locales) and
# docker import of a debootstrapped rootfs: a fresh one (amd64, or arm64 without a cached rootfs)
# is cleaned in place; scripts/test-arm64.sh's build/arm64/rootfs is read, not changed (its test
# venv in /opt, /tmp and the /bitfed mount point stay out of the image).
import_rootfs() {
    local rootfs="$1"
    shift
    tar -C "$rootfs" --one-file-system "$@" \
        --exclude=./var/cache/apt/* --exclude=./var/lib/apt/lists/* --exclude=./usr/share/doc/* \
        --exclude=./usr/share/man/* --exclude=./usr/share/locale/* --exclude=./var/log/* -c . |
        docker import --platform "linux/$PLATFORM" \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    say "base image $BASE_IMAGE: $(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes"
}

make_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        return
    fi
    local cached=build/arm64/rootfs
    if [ "$PLATFORM" = arm64 ] && [ -x "$cached/usr/bin/python3" ]; then
        say "arm64 base image from $cached (scripts/test-arm64.sh's debootstrap)"
        [ -e "$cached/usr/bin/python" ] || ln -s python3 "$cached/usr/bin/python"
        import_rootfs "$cached" --exclude=./opt/* --exclude=./tmp/* --exclude=./bitfed
        return
    fi
    command -v debootstrap >/dev/null 2>&1 || fail "debootstrap missing; run scripts/docker-engine.sh"
    local mirror rootfs
    mirror="$(debian_mirror)"
    [ -n "$mirror" ] || fail "no Debian mirror in /etc/apt/sources*; set BITFED_DEBIAN_MIRROR"
    rootfs="$(mktemp -d /tmp/bitfed-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' RETURN
    say "debootstrap --arch=$PLATFORM bookworm from $mirror (a few minutes, once; under qemu for arm64: ~30 min)"
    debootstrap --arch="$PLATFORM" --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 ||
        fail "debootstrap failed (see $rootfs.log)"
    rm -f "$rootfs.log"
    ln -sf python3 "$rootfs/usr/bin/python"
    import_rootfs "$rootfs"
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
    local reqs
    mkdir -p "$WHEELHOUSE"
    reqs="$WHEELHOUSE/requirements.txt"
    requirements >"$reqs.new"
    STAMP="$WHEELHOUSE/.stamp-$(cat "$reqs.new" "$CONSTRAINTS" | sha256sum | cut -c1-16)"
    mv "$reqs.new" "$reqs"
    [ -f "$STAMP" ] && return
    if [ "$PLATFORM" = arm64 ]; then
        make_wheelhouse_arm64 "$reqs"
        touch "$STAMP"
        return
    fi
    say "pip wheel into $WHEELHOUSE (extras: ${EXTRAS:-none})"
    # --find-links the wheelhouse itself: wheels already there are not fetched again.
    "$PY" -m pip wheel --quiet --disable-pip-version-check -c constraints.txt \
        --find-links "$WHEELHOUSE" -w "$WHEELHOUSE" -r "$reqs" ||
        fail "pip wheel failed; is the package index reachable from this host?"
    ls "$WHEELHOUSE"/torch-*+cpu-*.whl >/dev/null 2>&1 ||
        fail "no CPU torch wheel in $WHEELHOUSE (pip chose another build of torch)"
    touch "$STAMP"
}

# aarch64 wheels resolved here as an aarch64 bookworm device's pip would (binary only,
# scripts/pip_aarch64.py); a package published as an sdist only is built here first, which
# must give a pure-Python (py3-none-any) wheel, the same on every arch.
make_wheelhouse_arm64() {
    local reqs="$1" name
    say "aarch64 wheels into $WHEELHOUSE with $CONSTRAINTS (extras: ${EXTRAS:-none})"
    for name in antlr4-python3-runtime; do
        ls "$WHEELHOUSE/${name//-/_}"-*-py3-none-any.whl >/dev/null 2>&1 && continue
        "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps -c "$CONSTRAINTS" \
            -w "$WHEELHOUSE" "$name" || fail "pip wheel $name failed"
        ls "$WHEELHOUSE/${name//-/_}"-*-py3-none-any.whl >/dev/null 2>&1 ||
            fail "$name did not build as a pure-Python wheel; it cannot go to an aarch64 image"
    done
    "$PY" scripts/pip_aarch64.py download --quiet --disable-pip-version-check -c "$CONSTRAINTS" \
        --find-links "$WHEELHOUSE" -d "$WHEELHOUSE" -r "$reqs" ||
        fail "aarch64 wheel download failed; is the package index reachable from this host?"
    ls "$WHEELHOUSE"/torch-*-manylinux*_aarch64.whl >/dev/null 2>&1 ||
        fail "no aarch64 torch wheel in $WHEELHOUSE"
}

# Load the image `docker save $1` with its config's architecture set to $PLATFORM (variant v8
# for arm64) under the tags $2...; its layers are unchanged.
relabel() {
    local built="$1" dir
    shift
    dir="$(mktemp -d "${TMPDIR:-/tmp}/bitfed-relabel.XXXXXX")"
    docker save "$built" | tar -C "$dir" -x || fail "docker save $built failed"
    "$PY" - "$dir" "$PLATFORM" "$@" <<'EOF' || fail "relabelling $built failed"
import hashlib, json, pathlib, sys
root, arch, tags = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
(entry,) = manifest = json.loads((root / "manifest.json").read_text())
old = root / entry["Config"]
config = json.loads(old.read_bytes())
config.update(architecture=arch, os="linux", **({"variant": "v8"} if arch == "arm64" else {}))
data = json.dumps(config, separators=(",", ":")).encode()
entry["Config"] = f"{hashlib.sha256(data).hexdigest()}.json"
old.unlink()
(root / entry["Config"]).write_bytes(data)
entry["RepoTags"] = tags
(root / "manifest.json").write_text(json.dumps(manifest))
(root / "repositories").unlink(missing_ok=True)
EOF
    tar -C "$dir" -c . | docker load >/dev/null || fail "docker load of the relabelled $built failed"
    rm -rf "$dir"
}

source_hash() {
    "$PY" - <<'EOF'
import hashlib, pathlib, tomllib
root = pathlib.Path(".")
packages = tomllib.load(open("pyproject.toml", "rb"))["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
files = [root / n for n in ("Dockerfile", ".dockerignore", "constraints.txt",
                            "constraints-device-aarch64.txt", "pyproject.toml", "README.md")]
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
TAG="bitfed:src-$(source_hash)${EXTRAS:+-${EXTRAS//,/-}}$SUFFIX"
if docker image inspect "$TAG" >/dev/null 2>&1; then
    say "reusing $TAG (sources unchanged)"
    docker tag "$TAG" "bitfed:$VERSION$SUFFIX"
    echo "$TAG"
    exit 0
fi
make_base_image
make_wheelhouse
serve_wheelhouse
say "docker build $TAG"
started=$(date +%s)
LOG="build/offline-image$SUFFIX.log"
BUILT_TAGS=(-t "$TAG" -t "bitfed:$VERSION")
if [ "$PLATFORM" != amd64 ]; then
    BUILT_TAGS=(--build-arg TARGETARCH="$PLATFORM" -t "bitfed-build-cache:$VERSION$SUFFIX")
fi
SHARES=()
[ -z "${BITFED_BUILD_CPU_SHARES:-}" ] || SHARES=(--cpu-shares "$BITFED_BUILD_CPU_SHARES")
docker build --network host "${SHARES[@]}" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg PIP_NO_INDEX=1 \
    --build-arg PIP_FIND_LINKS="http://127.0.0.1:$PORT/" \
    --build-arg BITFED_EXTRAS="$EXTRAS" \
    --label bitfed.source-tag="$TAG" \
    "${BUILT_TAGS[@]}" . >"$LOG" 2>&1 || fail "docker build failed; see $LOG"
[ "$PLATFORM" = amd64 ] || relabel "bitfed-build-cache:$VERSION$SUFFIX" "$TAG" "bitfed:$VERSION$SUFFIX"
seconds=$(($(date +%s) - started))
bytes="$(docker image inspect -f '{{.Size}}' "$TAG")"
printf '{"tag": "%s", "platform": "linux/%s", "seconds": %d, "bytes": %d, "date": "%s"}\n' \
    "$TAG" "$PLATFORM" "$seconds" "$bytes" "$(date -u '+%Y-%m-%d %H:%M UTC')" >"${LOG%.log}.json"
say "built $TAG in $seconds s: $bytes bytes"
echo "$TAG"

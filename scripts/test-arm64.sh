#!/usr/bin/env bash
# make test-arm64: the training core's tests on aarch64, emulated by qemu-user (issue 19).
#
#   scripts/test-arm64.sh                 # tools, rootfs, wheels, venv (each once), then the tests
#   scripts/test-arm64.sh -- -k autograd  # extra pytest arguments after --
#   scripts/test-arm64.sh --shell CMD...  # run CMD in the arm64 environment (repo at /bitfed)
#
# 1. Debian's qemu-user-static, binfmt-support and debootstrap (apt-get, as root, if missing);
#    binfmt_misc mounted and qemu-aarch64 enabled (the F flag: usable inside a chroot).
# 2. An arm64 Debian bookworm (Python 3.11, glibc 2.36 = Raspberry Pi OS 64-bit) made with
#    `debootstrap --arch=arm64 --variant=minbase`, from the host's own apt mirror, kept in
#    build/arm64/rootfs.
# 3. The aarch64 wheels the device install resolves to (constraints-device-aarch64.txt: torch
#    2.9.1 from PyPI, CPU-only), downloaded on the host with scripts/pip_aarch64.py into
#    build/arm64/wheelhouse, installed in the chroot's /opt/venv with --no-index (torch, numpy,
#    scikit-learn for the digits file, pytest, hypothesis: what the core and its tests import;
#    --no-compile: modules are byte-compiled on first import only, in the venv).
# 4. The repository bind-mounted read-only at /bitfed; pytest runs ARM64_TESTS there with one
#    thread, no cache provider, hypothesis' database in the chroot's /tmp, on an emulated
#    Cortex-A72 (Raspberry Pi 4) unless BITFED_QEMU_CPU names another qemu CPU model.
#
# Environment: BITFED_ARM64_DIR (default build/arm64), BITFED_ARM64_SRC (tree to test, default
# this repository), BITFED_QEMU_CPU (default cortex-a72), BITFED_APT_MIRROR (default: the host's
# first Debian URI), PYTHON (a host CPython 3.11 with pip; default .venv/bin/python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${BITFED_ARM64_DIR:-$ROOT/build/arm64}"
SRC="$(cd "${BITFED_ARM64_SRC:-$ROOT}" && pwd)"
ROOTFS="$DIR/rootfs"
WHEELS="$DIR/wheelhouse"
HOST_PY="${PYTHON:-$ROOT/.venv/bin/python}"
CONSTRAINTS="$ROOT/constraints-device-aarch64.txt"
# The emulated CPU: cortex-a72 = Raspberry Pi 4 (Armv8.0: no bf16/fp16 arithmetic, no SVE);
# cortex-a76 = Pi 5; max = every feature qemu has (bf16, SVE), which changes torch's kernels.
QEMU_CPU_MODEL="${BITFED_QEMU_CPU:-cortex-a72}"
PACKAGES=(torch numpy scikit-learn pytest hypothesis)
PACKAGES_DEB=(qemu-user-static binfmt-support debootstrap)
# The subset (emulation is ~50x slower than native): pure math, the 1-bit autograd Functions and
# layers against their float references, the codec, the optimizer, the models and short training
# runs, on the MLP only (CNV, BinaryNet and ResNetE-18 parametrizations, lowcost-po2 and the three
# slowest whole-model tests are deselected by ARM64_DESELECT), the cross-platform fixture test and
# the kernel choice (core/kernels.py: float32 kernels on Cortex-A72/A76, which lack bf16).
ARM64_TESTS=(
    tests/core/test_functional.py
    tests/core/test_autograd.py
    tests/core/test_layers.py
    tests/core/test_codec.py
    tests/core/test_optim.py
    tests/core/test_models.py
    tests/core/test_train.py
    tests/core/test_uint8_path.py
    tests/core/test_cross_platform.py
    tests/core/test_kernels.py
)
ARM64_DESELECT="not (resnete18 or binarynet or cnv or lowcost-po2 or matches_adam_on_scaled"
ARM64_DESELECT+=" or measure_recipe_feeds or lowcost_training_on_uint8 or eval_mode_is_deterministic)"

say() { echo "test-arm64: $*" >&2; }
fail() {
    say "$*"
    exit 1
}

ensure_tools() {
    local missing=() pkg
    for pkg in "${PACKAGES_DEB[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        [ "$(id -u)" -eq 0 ] || fail "not root: apt-get install ${missing[*]} by hand, or run as root"
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
            { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } ||
            fail "apt-get install ${missing[*]} failed"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || fail "cannot mount binfmt_misc (root needed)"
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 ||
        fail "update-binfmts --enable qemu-aarch64 failed"
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || fail "binfmt qemu-aarch64 is disabled"
}

apt_mirror() {
    if [ -n "${BITFED_APT_MIRROR:-}" ]; then
        echo "$BITFED_APT_MIRROR"
        return
    fi
    local uri
    uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
    [ -n "$uri" ] || uri="$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
    echo "${uri:-http://deb.debian.org/debian}"
}

ensure_rootfs() {
    [ -e "$ROOTFS/.bitfed-rootfs" ] && return
    local mirror partial="$DIR/rootfs.partial"
    mirror="$(apt_mirror)"
    say "debootstrap arm64 bookworm from $mirror into $ROOTFS (once; ~10-20 min under emulation)"
    umount_all "$partial"
    rm -rf "$partial"
    mkdir -p "$DIR"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$partial" "$mirror" >"$DIR/debootstrap.log" 2>&1 ||
        fail "debootstrap failed (see $DIR/debootstrap.log)"
    rm -rf "$ROOTFS"
    mv "$partial" "$ROOTFS"
    touch "$ROOTFS/.bitfed-rootfs"
}

stamp_of() { cat "$CONSTRAINTS" "$ROOT/scripts/pip_aarch64.py" <(echo "${PACKAGES[*]}") | sha256sum | cut -c1-16; }

ensure_wheels() {
    local stamp
    stamp="$(stamp_of)"
    [ -e "$WHEELS/.stamp-$stamp" ] && return
    say "downloading the aarch64 wheels of ${PACKAGES[*]} into $WHEELS"
    rm -rf "$WHEELS"
    mkdir -p "$WHEELS"
    env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
        "$HOST_PY" "$ROOT/scripts/pip_aarch64.py" download --quiet -d "$WHEELS" \
        -c "$CONSTRAINTS" "${PACKAGES[@]}" || fail "pip download of the aarch64 wheels failed"
    if ls "$WHEELS" | grep -E -i '^(nvidia|cuda|triton)'; then
        fail "the aarch64 wheels include CUDA/NVIDIA packages (listed above)"
    fi
    cp "$CONSTRAINTS" "$WHEELS/constraints.txt"
    touch "$WHEELS/.stamp-$stamp"
}

MOUNTED=()
mount_all() {
    mkdir -p "$ROOTFS/bitfed" "$ROOTFS/wheels"
    mountpoint -q "$ROOTFS/proc" || { mount -t proc proc "$ROOTFS/proc" && MOUNTED+=("$ROOTFS/proc"); }
    mountpoint -q "$ROOTFS/dev" || { mount --rbind /dev "$ROOTFS/dev" && mount --make-rslave "$ROOTFS/dev" && MOUNTED+=("$ROOTFS/dev"); }
    mountpoint -q "$ROOTFS/sys" || { mount --rbind /sys "$ROOTFS/sys" && mount --make-rslave "$ROOTFS/sys" && MOUNTED+=("$ROOTFS/sys"); }
    mountpoint -q "$ROOTFS/wheels" || { mount --bind "$WHEELS" "$ROOTFS/wheels" && mount -o remount,bind,ro "$ROOTFS/wheels" && MOUNTED+=("$ROOTFS/wheels"); }
    mountpoint -q "$ROOTFS/bitfed" || { mount --bind "$SRC" "$ROOTFS/bitfed" && mount -o remount,bind,ro "$ROOTFS/bitfed" && MOUNTED+=("$ROOTFS/bitfed"); }
    cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
}

umount_all() {
    local base="${1:-}" m
    if [ -n "$base" ]; then  # anything left mounted under a rootfs (an interrupted run)
        for m in $(awk -v b="$base" 'index($2, b) == 1 {print $2}' /proc/mounts | sort -r); do
            umount -l "$m" 2>/dev/null || true
        done
        return
    fi
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount -l "${MOUNTED[$i]}" 2>/dev/null || true
    done
    MOUNTED=()
}

in_chroot() {
    chroot "$ROOTFS" /usr/bin/env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
        QEMU_CPU="$QEMU_CPU_MODEL" \
        PYTHONPATH=/bitfed OMP_NUM_THREADS=1 \
        HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis FLWR_TELEMETRY_ENABLED=0 \
        FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
        BITFED_ARM64=1 "$@"
}

ensure_venv() {
    local stamp
    stamp="$(stamp_of)"
    [ -e "$ROOTFS/opt/venv/.stamp-$stamp" ] && return
    say "installing ${PACKAGES[*]} into the arm64 /opt/venv (--no-index)"
    rm -rf "$ROOTFS/opt/venv"
    in_chroot /usr/bin/python3 -m venv /opt/venv || fail "python3 -m venv failed in the chroot"
    in_chroot /opt/venv/bin/python -m pip install --quiet --disable-pip-version-check --no-index --no-compile \
        --find-links /wheels -c /wheels/constraints.txt "${PACKAGES[@]}" ||
        fail "pip install in the chroot failed"
    touch "$ROOTFS/opt/venv/.stamp-$stamp"
}

main() {
    [ "$(uname -m)" = x86_64 ] || say "host is $(uname -m); the same steps apply"
    [ "$(id -u)" -eq 0 ] || fail "needs root (apt-get, binfmt_misc, debootstrap, chroot, mounts)"
    "$HOST_PY" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null ||
        fail "$HOST_PY is not CPython 3.11 (set PYTHON=...; run make test once to build .venv)"
    ensure_tools
    ensure_rootfs
    ensure_wheels
    trap umount_all EXIT
    mount_all
    ensure_venv
    if [ "${1:-}" = --shell ]; then
        shift
        in_chroot /bin/sh -c "cd /bitfed && $*"
        return
    fi
    [ "${1:-}" = -- ] && shift
    local tests=()
    for t in "${ARM64_TESTS[@]}"; do
        [ -e "$SRC/$t" ] && tests+=("$t")
    done
    say "$(in_chroot /opt/venv/bin/python -c 'import platform, torch; print(platform.machine(), "torch", torch.__version__, "capability", torch.backends.cpu.get_cpu_capability())' 2>/dev/null)"
    local start=$SECONDS rc=0
    in_chroot /bin/sh -c 'cd /bitfed && exec python -m pytest -p no:cacheprovider -q "$@"' \
        pytest -k "$ARM64_DESELECT" --durations=10 "${tests[@]}" "$@" || rc=$?
    say "${#tests[@]} test files under emulation: $((SECONDS - start)) s, exit $rc"
    return "$rc"
}

main "$@"

#!/usr/bin/env bash
# Set up an emulated aarch64 "device" on an x86 Linux host, for ecograph's ARM tests:
#   qemu-user (qemu-aarch64) + a Debian arm64 sysroot with Python 3.11 + aarch64 wheels of
#   apache-tvm / apache-tvm-ffi / numpy / ml_dtypes, plus Debian's aarch64 cross compiler.
#
# Everything downloaded is cached under $ECOGRAPH_ARM_EMULATOR_DIR
# (default: ${XDG_CACHE_HOME:-$HOME/.cache}/ecograph/arm-emulator); running the script again
# reuses the cache and does nothing when the emulator is already set up (idempotent).
#
# Usage: scripts/setup_arm_emulator.sh            # set up (apt-get needs root)
#        scripts/setup_arm_emulator.sh --check    # exit 0 only if the emulator is ready
# The tests find the emulator through the same variable (see ecograph/backends/tvm/rpc.py).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${ECOGRAPH_ARM_EMULATOR_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ecograph/arm-emulator}"
SYSROOT="$CACHE/sysroot"
SITE="$CACHE/site-packages"
DEBS="$CACHE/debs"
WHEELS="$CACHE/wheels"
READY="$CACHE/READY"
PY="${PYTHON:-$ROOT/.venv/bin/python}"

# Debian arm64 packages that make a working python3.11 (see docs/tvm.md).
ARM_PACKAGES=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1
  zlib1g libffi8 libssl3 libstdc++6 libgcc-s1 libbz2-1.0 liblzma5 libsqlite3-0 libncursesw6
  libtinfo6 libreadline8 libuuid1 libcrypt1 libnsl2 libtirpc3 libdb5.3 libgdbm6)
ALL_PACKAGES=(media-types)  # architecture-independent

log() { echo "[setup_arm_emulator] $*"; }

smoke_test() {
  qemu-aarch64 -L "$SYSROOT" -E PYTHONPATH="$SITE" -E PYTHONNOUSERSITE=1 \
    "$SYSROOT/usr/bin/python3.11" -c "import tvm, numpy; print('tvm', tvm.__version__)"
}

if [[ "${1:-}" == "--check" ]]; then
  [[ -f "$READY" ]] && command -v qemu-aarch64 >/dev/null && exit 0
  exit 1
fi

if [[ -f "$READY" ]] && command -v qemu-aarch64 >/dev/null \
   && command -v aarch64-linux-gnu-g++ >/dev/null; then
  log "already set up in $CACHE"
  exit 0
fi

mkdir -p "$CACHE" "$DEBS" "$WHEELS"

# 1. Host tools: qemu-user and the cross compiler (Debian/Ubuntu).
need_apt=()
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v aarch64-linux-gnu-g++ >/dev/null || need_apt+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu)
if ! dpkg --print-foreign-architectures 2>/dev/null | grep -qx arm64; then
  log "adding the arm64 dpkg architecture"
  dpkg --add-architecture arm64
  apt_updated=0
fi
if (( ${#need_apt[@]} )) || [[ "${apt_updated:-1}" == 0 ]]; then
  log "apt-get update"
  apt-get update -q
fi
if (( ${#need_apt[@]} )); then
  log "installing ${need_apt[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
fi

# 2. The arm64 sysroot: Debian packages downloaded once, then unpacked.
missing=()
for pkg in "${ARM_PACKAGES[@]}"; do
  compgen -G "$DEBS/${pkg}_*_arm64.deb" >/dev/null || missing+=("$pkg:arm64")
done
for pkg in "${ALL_PACKAGES[@]}"; do
  compgen -G "$DEBS/${pkg}_*_all.deb" >/dev/null || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
  log "downloading ${#missing[@]} Debian arm64 packages"
  (cd "$DEBS" && apt-get download "${missing[@]}") || {
    log "apt-get download failed (is the arm64 architecture added and 'apt-get update' run?)"
    exit 1
  }
fi
if [[ ! -x "$SYSROOT/usr/bin/python3.11" ]]; then
  log "unpacking the sysroot into $SYSROOT"
  rm -rf "$SYSROOT.tmp" && mkdir -p "$SYSROOT.tmp"
  for deb in "$DEBS"/*.deb; do dpkg -x "$deb" "$SYSROOT.tmp"; done
  rm -rf "$SYSROOT" && mv "$SYSROOT.tmp" "$SYSROOT"
fi

# 3. aarch64 wheels, same versions as the host where they are pinned.
pin() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
specs=()
for name in apache-tvm apache-tvm-ffi numpy ml_dtypes typing_extensions cloudpickle; do
  v="$(pin "$name")"
  specs+=("$name${v:+==$v}")
done
specs+=(psutil tornado)
if ! compgen -G "$WHEELS/apache_tvm-*aarch64*.whl" >/dev/null; then
  log "downloading aarch64 wheels: ${specs[*]}"
  "$PY" -m pip download --quiet --only-binary=:all: --no-deps --dest "$WHEELS" \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 --platform any "${specs[@]}"
fi
if [[ ! -d "$SITE/tvm" ]]; then
  log "unpacking wheels into $SITE"
  rm -rf "$SITE.tmp" && mkdir -p "$SITE.tmp"
  for whl in "$WHEELS"/*.whl; do
    "$PY" -m zipfile -e "$whl" "$SITE.tmp"
  done
  rm -rf "$SITE" && mv "$SITE.tmp" "$SITE"
fi

# 4. Smoke test: import tvm under emulation (about 15 s).
log "smoke test (import tvm under qemu-aarch64)"
smoke_test
touch "$READY"
log "ready: $CACHE"

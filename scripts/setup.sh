#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: libtorch 2.11.0 (from the PyPI wheel,
# cached once per machine outside the clone), CUDA runtime headers, the
# Fashion-MNIST Debian package, and the C/C++/Go toolchains the tests use. Safe to run again: every step
# checks first and does nothing when its result is already there.
#
# Environment:
#   LIBTORCH          use this libtorch 2.11.0 instead (e.g. a CUDA build); the
#                     wheel is then not installed.
#   MOTH_CACHE_DIR    where the wheel is unpacked (default ~/.cache/moth).
#   MOTH_SKIP_APT=1   do not touch Debian packages (you installed them yourself).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${MOTH_CACHE_DIR:-$HOME/.cache/moth}"
torch_version="2.11.0"
site="$cache/torch-$torch_version"

log() { printf '[setup] %s\n' "$*" >&2; }

install_apt() {
    [ "${MOTH_SKIP_APT:-0}" = 1 ] && return 0
    local missing=()
    [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
    command -v g++ >/dev/null || missing+=(g++)
    command -v cmake >/dev/null || missing+=(cmake)
    command -v go >/dev/null || missing+=(golang-go)
    command -v valgrind >/dev/null || missing+=(valgrind)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    [ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
    # Gloo's headers: the wheel's c10d headers include them (the C++
    # trainer's data-parallel path, tests/c_abi_examples.rs).
    [ -f /usr/include/gloo/config.h ] || missing+=(libgloo-dev)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The torch wheel is a complete libtorch (headers + shared libraries). We take
# it without its Python dependencies and add only the two CUDA runtime
# libraries that libtorch_cpu.so links against even on a CPU-only machine.
install_libtorch() {
    if [ -n "${LIBTORCH:-}" ]; then
        [ -f "$LIBTORCH/lib/libtorch_cpu.so" ] || { log "LIBTORCH=$LIBTORCH has no lib/libtorch_cpu.so"; exit 1; }
        ln -sfn "$LIBTORCH" "$root/.libtorch"
        log "using LIBTORCH=$LIBTORCH"
        return 0
    fi
    if [ ! -f "$site/.complete" ]; then
        log "installing libtorch $torch_version (torch wheel, ~530 MB) into $site"
        rm -rf "$site"
        mkdir -p "$site"
        python3 -m pip install -q --disable-pip-version-check --no-deps --no-compile \
            --target "$site" "torch==$torch_version" \
            "nvidia-cuda-runtime==13.0.96.*" "nvidia-cuda-cupti==13.0.85.*"
        touch "$site/.complete"
    fi
    ln -sfn "$site/torch" "$root/.libtorch"
    log "libtorch: $site/torch (linked as .libtorch)"
}

# CUDA runtime headers (a few MB, no compiler): with them the CUDA path of
# examples/cpp/trainer.cpp is compiled by the tests on machines without a
# GPU, so that it cannot rot unseen. Linked as .cuda-include.
install_cuda_headers() {
    local dir="$cache/cuda-headers-13.0"
    if [ ! -f "$dir/.complete" ]; then
        log "installing CUDA 13.0 runtime headers into $dir"
        rm -rf "$dir"
        mkdir -p "$dir"
        python3 -m pip install -q --disable-pip-version-check --no-deps --no-compile \
            --target "$dir" "nvidia-cuda-runtime==13.0.96.*" "nvidia-cuda-crt==13.0.88.*"
        touch "$dir/.complete"
    fi
    ln -sfn "$dir/nvidia/cu13/include" "$root/.cuda-include"
}

install_apt
install_libtorch
install_cuda_headers
log "ready"

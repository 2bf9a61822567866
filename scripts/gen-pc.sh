#!/bin/sh
# Writes moth.pc, the pkg-config description of this checkout's libmoth,
# from cmake/moth.pc.in. C programs (`pkg-config --cflags --libs moth`) and
# the Go package (cgo's `#cgo pkg-config: moth`) then find moth.h and
# libmoth.so wherever they are built from.
#
# Usage: scripts/gen-pc.sh [OUT_DIR [LIB_DIR]]
#   OUT_DIR  where moth.pc goes (default target/release)
#   LIB_DIR  the folder holding libmoth.so (default OUT_DIR)
# Then: export PKG_CONFIG_PATH=OUT_DIR
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/release}
mkdir -p "$out"
out=$(cd "$out" && pwd)
libdir=$(cd "${2:-$out}" && pwd)
torch=$(readlink -f "${LIBTORCH:-$root/.libtorch}")
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
sed -e "s|@MOTH_ROOT@|$root|" -e "s|@TORCH_ROOT@|$torch|" \
    -e "s|@MOTH_VERSION@|$version|" -e "s|^libdir=.*|libdir=$libdir|" \
    "$root/cmake/moth.pc.in" >"$out/moth.pc"
echo "$out/moth.pc"

#!/usr/bin/env bash
# Regenerates include/moth.h from src/ffi/ with cbindgen 0.29.4 (a pinned
# dev-dependency; no cbindgen binary needed) and the settings in
# cbindgen.toml. The test `header_is_current` (tests/c_abi_header.rs) fails until
# the checked-in header equals what this writes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo test --release --test c_abi_header -- --ignored --exact regenerate_header --quiet
git diff --stat -- include/moth.h 2>/dev/null || true
echo "include/moth.h regenerated" >&2

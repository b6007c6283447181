#!/usr/bin/env bash
# Regenerates the Swift bindings (sources, C header, modulemap) from the huskies-bindings
# library with uniffi's generator, built from the same uniffi version (the bin target
# `uniffi-bindgen` of the bindings crate; the documented way for proc-macro crates).
#
#   bindings/swift/generate.sh           # rewrite the committed files
#   bindings/swift/generate.sh --check   # fail (exit 1) when the committed files are stale
#
# No Swift compiler is needed (nor present on the project's machines): only generation.
set -euo pipefail
cd "$(dirname "$0")/../.."
check=false
[[ "${1:-}" == "--check" ]] && check=true

cargo build --locked -q -p huskies-bindings --lib --bin uniffi-bindgen
lib=target/debug/libhuskies_bindings.so
[[ -f "$lib" ]] || lib=target/debug/libhuskies_bindings.dylib
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
target/debug/uniffi-bindgen generate --library "$lib" --language swift --out-dir "$out/raw" >/dev/null

# SwiftPM layout: a C target for the FFI header (module `huskies_bindingsFFI`, which the
# generated Swift imports) and a Swift target for the API.
mkdir -p "$out/Sources/huskies_bindingsFFI/include" "$out/Sources/Huskies"
cp "$out/raw/huskies_bindingsFFI.h" "$out/Sources/huskies_bindingsFFI/include/"
cp "$out/raw/huskies_bindingsFFI.modulemap" "$out/Sources/huskies_bindingsFFI/include/module.modulemap"
cp "$out/raw/huskies_bindings.swift" "$out/Sources/Huskies/"
# SwiftPM needs a source file in a C target; the FFI is all in the header.
printf '// The FFI lives in include/huskies_bindingsFFI.h; see bindings/swift/generate.sh.\n' \
    >"$out/Sources/huskies_bindingsFFI/shim.c"

if $check; then
    if ! diff -r "$out/Sources" bindings/swift/Sources; then
        echo "bindings/swift is stale: run bindings/swift/generate.sh and commit the result" >&2
        exit 1
    fi
    echo "bindings/swift is up to date"
else
    rm -rf bindings/swift/Sources
    cp -r "$out/Sources" bindings/swift/Sources
    echo "bindings/swift/Sources regenerated"
fi

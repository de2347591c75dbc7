#!/usr/bin/env bash
# Re-creates vendor/mistralrs-core: the registry's mistralrs-core release (sha256 pinned in
# vendor/mistralrs-core.sha256), unpacked, with vendor/patches/*.patch applied in name order.
#
#   vendor/update.sh             rewrite vendor/mistralrs-core (after adding or editing a patch)
#   vendor/update.sh --check     rebuild it in a temp dir and fail on any difference (CI)
#   vendor/update.sh --pristine  rewrite vendor/mistralrs-core without the patches
#                                (the base to edit when writing a new patch)
#
# The crate comes through cargo itself: from cargo's download cache when it is there, else
# by `cargo fetch` in a throwaway project that depends on exactly this version.
set -euo pipefail

CRATE=mistralrs-core
VERSION=0.8.1
VENDOR="$(cd "$(dirname "$0")" && pwd)"
TREE="$VENDOR/$CRATE"

mode=update
case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    --pristine) mode=pristine ;;
    *) echo "usage: $0 [--check|--pristine]" >&2; exit 2 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cargo_cache() {
    ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$CRATE-$VERSION.crate" 2>/dev/null | head -n 1 || true
}

crate_file="$(cargo_cache)"
if [[ -z "$crate_file" ]]; then
    mkdir -p "$work/fetch/src"
    : >"$work/fetch/src/lib.rs"
    cat >"$work/fetch/Cargo.toml" <<TOML
[package]
name = "vendor-fetch"
version = "0.0.0"
edition = "2021"

[dependencies]
$CRATE = "=$VERSION"

[workspace]
TOML
    cargo fetch --quiet --manifest-path "$work/fetch/Cargo.toml"
    crate_file="$(cargo_cache)"
    [[ -n "$crate_file" ]] || { echo "cargo fetch did not leave $CRATE-$VERSION.crate" >&2; exit 1; }
fi

want="$(cut -d' ' -f1 "$VENDOR/$CRATE.sha256")"
got="$(sha256sum "$crate_file" | cut -d' ' -f1)"
if [[ "$got" != "$want" ]]; then
    echo "$crate_file: sha256 $got, pinned $want" >&2
    exit 1
fi

tar -xzf "$crate_file" -C "$work"
built="$work/$CRATE-$VERSION"
if [[ "$mode" != pristine ]]; then
    for p in "$VENDOR"/patches/*.patch; do
        [[ -e "$p" ]] || continue
        # git apply: no fuzz, and all-or-nothing per patch. The ceiling keeps git from taking
        # an enclosing repository as the base (it would then skip the patch's paths).
        (cd "$built" && GIT_CEILING_DIRECTORIES="$work" git apply --whitespace=nowarn "$p") ||
            { echo "patch $(basename "$p") does not apply" >&2; exit 1; }
    done
fi

if [[ "$mode" == check ]]; then
    if ! diff -r "$built" "$TREE"; then
        echo "vendor/$CRATE differs from $CRATE $VERSION + vendor/patches; run vendor/update.sh" >&2
        exit 1
    fi
    echo "vendor/$CRATE is $CRATE $VERSION + $(ls "$VENDOR"/patches/*.patch 2>/dev/null | wc -l) patches"
else
    rm -rf "$TREE"
    mv "$built" "$TREE"
fi

#!/usr/bin/env bash
# Installs a skopeo that verifies sigstore (cosign-format) signatures, for the evidence suite's
# independent check of what Baton signs (tests/tests/evidence.rs).
#
# Debian bookworm's skopeo 1.9 carries a Debian-local change that refuses every `sigstoreSigned`
# policy ("sigstore disabled"). Debian trixie's skopeo 1.18 verifies them. This script takes
# trixie's skopeo and the libraries it needs (glibc 2.41, gpgme, assuan, gpg-error, sqlite) from
# deb.debian.org, checks each package against the sha256 trixie's signed index lists, and
# unpacks them into a cache directory (default ~/.cache/baton/skopeo-sigstore), with a wrapper
# `bin/skopeo` that runs skopeo through trixie's own dynamic loader: nothing outside the cache
# changes, and the system's skopeo stays as it is. A later run whose cache is complete returns
# at once.
#
# Environment: SKOPEO_SIGSTORE_BIN names a sigstore-capable skopeo to use instead (then nothing
# is installed); BATON_SKOPEO_SIGSTORE_CACHE overrides the cache directory; DEBIAN_MIRROR the
# mirror (default http://deb.debian.org/debian).
set -euo pipefail

cache="${BATON_SKOPEO_SIGSTORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/baton/skopeo-sigstore}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=trixie
packages=(skopeo libc6 libgpgme11t64 libassuan9 libgpg-error0 libsqlite3-0)

if [[ -n "${SKOPEO_SIGSTORE_BIN:-}" ]]; then
    if [[ ! -x "$SKOPEO_SIGSTORE_BIN" ]]; then
        echo "error: SKOPEO_SIGSTORE_BIN=$SKOPEO_SIGSTORE_BIN is not an executable file" >&2
        exit 1
    fi
    echo "skopeo (sigstore): $SKOPEO_SIGSTORE_BIN ($("$SKOPEO_SIGSTORE_BIN" --version))"
    exit 0
fi
if [[ -x "$cache/bin/skopeo" ]] && "$cache/bin/skopeo" --version >/dev/null 2>&1; then
    echo "skopeo (sigstore): $cache/bin/skopeo ($("$cache/bin/skopeo" --version))"
    exit 0
fi

for tool in curl xz dpkg-deb sha256sum; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: installing skopeo with sigstore needs $tool" >&2
        exit 1
    fi
done

mkdir -p "$(dirname "$cache")"
work="$(mktemp -d "$(dirname "$cache")/skopeo-sigstore.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# The release file is signed by Debian's archive keys (checked with gpgv when both are there);
# the package index is checked against the sha256 it lists, and each package against the index.
echo "skopeo (sigstore): reading Debian $suite's index from $mirror"
curl -fsS --retry 3 -o "$work/InRelease" "$mirror/dists/$suite/InRelease"
if command -v gpgv >/dev/null 2>&1 && [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
    gpgv --quiet --keyring /usr/share/keyrings/debian-archive-keyring.gpg "$work/InRelease" 2>/dev/null \
        || { echo "error: Debian $suite's InRelease does not verify against debian-archive-keyring" >&2; exit 1; }
fi
index_sha="$(awk '/^SHA256:/{s=1; next} /^[^ ]/{s=0} s && $3=="main/binary-amd64/Packages.xz"{print $1}' "$work/InRelease")"
curl -fsS --retry 3 -o "$work/Packages.xz" "$mirror/dists/$suite/main/binary-amd64/Packages.xz"
echo "$index_sha  $work/Packages.xz" | sha256sum --check --quiet
xz -dc "$work/Packages.xz" > "$work/Packages"

mkdir -p "$work/root"
for package in "${packages[@]}"; do
    read -r file sha < <(awk -v want="$package" '
        $0 == "Package: " want {found=1}
        found && /^Filename:/ {file=$2}
        found && /^SHA256:/ {sha=$2}
        found && /^$/ {print file, sha; exit}' "$work/Packages")
    if [[ -z "${file:-}" || -z "${sha:-}" ]]; then
        echo "error: Debian $suite has no package $package" >&2
        exit 1
    fi
    echo "skopeo (sigstore): $file"
    curl -fsS --retry 3 -o "$work/package.deb" "$mirror/$file"
    echo "$sha  $work/package.deb" | sha256sum --check --quiet
    dpkg-deb -x "$work/package.deb" "$work/root"
done

mkdir -p "$work/root/bin"
cat > "$work/root/bin/skopeo" <<'WRAPPER'
#!/bin/sh
# Debian trixie's skopeo, run with trixie's loader and libraries (scripts/install-skopeo-sigstore.sh).
here="$(cd "$(dirname "$0")/.." && pwd)"
lib="$here/usr/lib/x86_64-linux-gnu"
exec "$lib/ld-linux-x86-64.so.2" --library-path "$lib" "$here/usr/bin/skopeo" "$@"
WRAPPER
chmod +x "$work/root/bin/skopeo"
"$work/root/bin/skopeo" --version >/dev/null

rm -rf "$cache"
mv "$work/root" "$cache"
echo "skopeo (sigstore): $cache/bin/skopeo ($("$cache/bin/skopeo" --version))"

#!/usr/bin/env bash
# Builds the Kubernetes control plane Baton's tests and demo run against (DESIGN.md §6):
# kube-apiserver, kube-controller-manager and kube-scheduler 1.20.2 from Debian's `kubernetes`
# source package with Debian's Go, plus etcd from Debian's `etcd-server`. The three binaries are
# cached outside the repository (default ~/.cache/baton/k8s-1.20.2/bin); a later run whose cache
# is complete returns at once. About 9 minutes on 2 cores the first time.
#
# Environment: BATON_K8S_CACHE overrides the cache directory; BATON_K8S_BIN_DIR names a directory
# that already holds the three binaries (then nothing is built); ETCD_BIN an etcd to use instead of
# Debian's. Needs root or sudo for apt-get.
# Concurrent runs (two worktrees running `just setup`) take turns on a lock in the cache directory.
set -euo pipefail

version=1.20.2
cache="${BATON_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/baton/k8s-$version}"
binaries=(kube-apiserver kube-controller-manager kube-scheduler)

as_root=()
if [[ "$(id -u)" != 0 ]]; then as_root=(sudo); fi

apt_updated=0
apt_install() {
    if (( apt_updated == 0 )); then
        "${as_root[@]}" apt-get update -qq
        apt_updated=1
    fi
    echo "kubernetes: installing $*: apt-get install -y $*"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# What the test harness runs besides the three binaries: etcd, and openssl for the cluster's
# keys and certificates.
runtime_missing=()
if [[ -z "${ETCD_BIN:-}" ]] && ! command -v etcd >/dev/null 2>&1 && [[ ! -x /usr/bin/etcd ]]; then
    runtime_missing+=(etcd-server)
fi
command -v openssl >/dev/null 2>&1 || runtime_missing+=(openssl)
if (( ${#runtime_missing[@]} > 0 )); then apt_install "${runtime_missing[@]}"; fi

if [[ -n "${BATON_K8S_BIN_DIR:-}" ]]; then
    for binary in "${binaries[@]}"; do
        if [[ ! -x "$BATON_K8S_BIN_DIR/$binary" ]]; then
            echo "error: BATON_K8S_BIN_DIR=$BATON_K8S_BIN_DIR holds no executable $binary; unset it to build $version" >&2
            exit 1
        fi
    done
    echo "kubernetes: control plane from BATON_K8S_BIN_DIR=$BATON_K8S_BIN_DIR"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
if ! flock -n 9; then
    echo "kubernetes: another build of the control plane is running; waiting for it ($cache/.lock)"
    flock 9
fi

complete=1
for binary in "${binaries[@]}"; do
    if [[ ! -x "$cache/bin/$binary" ]]; then complete=0; fi
done
if (( complete == 1 )); then
    echo "kubernetes: control plane $version cached in $cache/bin"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: building the Kubernetes control plane needs Debian's apt-get (source package 'kubernetes');" >&2
    echo "       or put kube-apiserver, kube-controller-manager and kube-scheduler $version into $cache/bin" >&2
    exit 1
fi

missing=()
command -v go >/dev/null 2>&1 || missing+=(golang-go)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v dpkg-source >/dev/null 2>&1 || missing+=(dpkg-dev)
command -v make >/dev/null 2>&1 || missing+=(make)
if (( ${#missing[@]} > 0 )); then apt_install "${missing[@]}"; fi

# A deb-src twin of the machine's Debian `deb` entries (never a hard-coded host), unless source
# entries exist already.
twin=/etc/apt/sources.list.d/baton-deb-src.sources
if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    stanzas="$(
        for file in /etc/apt/sources.list.d/*.sources; do
            [[ -f "$file" ]] || continue
            # deb822 stanzas whose Types include deb and whose URIs name a Debian archive.
            awk 'BEGIN { RS = ""; ORS = "\n\n" }
                 /Types:[^\n]*deb/ && /URIs:[^\n]*debian/ && !/debian-security/ {
                     sub(/Types:[^\n]*/, "Types: deb-src"); print
                 }' "$file"
        done
    )"
    lines="$(grep -hsE '^deb [^#]*debian' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        | grep -v debian-security | sed 's/^deb /deb-src /' || true)"
    if [[ -n "$stanzas" ]]; then
        echo "kubernetes: adding deb-src entries mirroring the Debian deb entries: $twin"
        printf '%s' "$stanzas" | "${as_root[@]}" tee "$twin" >/dev/null
    elif [[ -n "$lines" ]]; then
        twin=/etc/apt/sources.list.d/baton-deb-src.list
        echo "kubernetes: adding deb-src lines mirroring the Debian deb lines: $twin"
        printf '%s\n' "$lines" | "${as_root[@]}" tee "$twin" >/dev/null
    else
        echo "error: no Debian 'deb' entry found in /etc/apt/sources.list{,.d}; add a deb-src entry for" >&2
        echo "       a Debian mirror that carries the 'kubernetes' $version source package and rerun" >&2
        exit 1
    fi
    apt_updated=0
fi
if (( apt_updated == 0 )); then "${as_root[@]}" apt-get update -qq; apt_updated=1; fi

work="$cache/src"
rm -rf "$work"
mkdir -p "$work"
cd "$work"
echo "kubernetes: apt-get source kubernetes (into $work)"
apt-get source --download-only -qq kubernetes >/dev/null
dsc="$(ls kubernetes_*.dsc | head -n1)"
# Debian names it e.g. kubernetes_1.20.5+really1.20.2-1.1+deb12u1: the upstream tree is 1.20.2.
if [[ "$dsc" != kubernetes_"$version"* && "$dsc" != kubernetes_*really"$version"* ]]; then
    echo "error: Debian's kubernetes source package is $dsc, not $version" >&2
    exit 1
fi
dpkg-source --no-check -x "$dsc" tree >/dev/null
cd tree
mkdir -p .go/src/k8s.io
ln -sfn "$PWD" .go/src/k8s.io/kubernetes
echo "kubernetes: building ${binaries[*]} with $(go version) (about 9 minutes on 2 cores)"
started=$SECONDS
# `go build` is silent for minutes; say every 30 s that it is still working, so neither a person
# nor a CI job that kills silent steps takes it for hung.
(
    exec 9>&-  # not the lock: a sleep left behind must not hold it
    while sleep 30; do printf 'kubernetes: [%4ds] still building\n' "$((SECONDS - started))"; done
) &
ticker=$!
trap 'kill "$ticker" 2>/dev/null || true' EXIT
(
    cd .go/src/k8s.io/kubernetes
    export GOPATH="$PWD/../../.." CGO_ENABLED=0 GOFLAGS=-mod=vendor GO111MODULE=on
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" 2>&1 \
        | while IFS= read -r line; do printf 'kubernetes: [%4ds] %s\n' "$((SECONDS - started))" "$line"; done
)
kill "$ticker" 2>/dev/null || true
mkdir -p "$cache/bin"
for binary in "${binaries[@]}"; do
    built="$(find _output -type f -name "$binary" -perm -u+x | head -n1)"
    if [[ -z "$built" ]]; then
        echo "error: make finished but $binary is not under $PWD/_output" >&2
        exit 1
    fi
    install -m 0755 "$built" "$cache/bin/$binary.tmp"
    mv "$cache/bin/$binary.tmp" "$cache/bin/$binary"
done
cd "$cache"
rm -rf "$work"
echo "kubernetes: control plane $version built in $((SECONDS - started)) s, cached in $cache/bin"

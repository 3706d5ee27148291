#!/usr/bin/env bash
# POSIX conformance: pjdfstest (the Rust rewrite) on an s3vault mount.
#
# Every pjdfstest test that fails must be listed, with a reason, in
# pjdfstest-known-failures.txt; a failure not listed is a regression and
# fails this suite. Listed tests that pass again are reported, so the list
# can shrink. Counts: every pjdfstest test that passes is one passed check,
# every regression one failed check; known failures and skips are printed
# but not counted.
#
# Usage: [E2E_URL=... E2E_ENDPOINT=...] bash tests/e2e/pjdfstest.sh
#        bash tests/e2e/pjdfstest.sh --plain DIR   # no s3vault: check the
#                                                  # config on e.g. ext4
# PJDFSTEST: the pjdfstest binary (default: $S3VAULT_TOOLS/bin/pjdfstest)
# Functions here are mostly run indirectly, through `check`.
# shellcheck disable=SC2317
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

PLAIN_DIR=""
if [[ ${1:-} == --plain ]]; then
    PLAIN_DIR=${2:?usage: pjdfstest.sh --plain DIR}
    # a plain directory needs no s3vault binary
    S3VAULT=/bin/true
fi

e2e_init pjdfstest
# pjdfstest switches to unprivileged users, which must be able to reach the
# test directory: mktemp makes the work dir 0700.
chmod 0755 "$WORK"

: "${PJDFSTEST:=${S3VAULT_TOOLS:-$HOME/.cache/s3vault-tools}/bin/pjdfstest}"
CONF=$E2E_DIR/pjdfstest.toml
KNOWN=$E2E_DIR/pjdfstest-known-failures.txt
OUT=$WORK/pjdfstest.out
[[ -x $PJDFSTEST ]] || abort "pjdfstest not found at $PJDFSTEST (scripts/test.sh installs it)"

# run_pjdfstest DIR: the whole suite in DIR; its report goes to $OUT. The
# exit status is not used: the report is parsed instead.
run_pjdfstest() {
    local dir=$1
    mkdir -p "$dir"
    chmod 0755 "$dir"
    # NO_COLOR: plain text to parse.
    (cd "$dir" && NO_COLOR=1 "$PJDFSTEST" -c "$CONF" -p "$dir") >"$OUT" 2>&1 || true
    if ! grep -q '^Summary:' "$OUT"; then
        echo "pjdfstest ended without a summary:"
        tail -n 30 "$OUT"
        return 1
    fi
    grep '^Summary:' "$OUT"
}

if [[ -n $PLAIN_DIR ]]; then
    PLAIN_RUN=$(mktemp -d "$PLAIN_DIR/pjdfstest.XXXXXX")
    check "pjdfstest on $PLAIN_DIR" run_pjdfstest "$PLAIN_RUN"
    rm -rf "$PLAIN_RUN"
else
    KEY=$WORK/key
    URL=$(vol_url pjdfstest)
    MNT=$WORK/mnt
    require "keygen" sv_keygen "$KEY"
    require "init $URL" sv_init "$URL" --key-file "$KEY"
    # allow_other: pjdfstest switches to other users (nobody, daemon).
    require "mount -o allow_other" sv_mount "$URL" "$MNT" "$WORK/cache" --key-file "$KEY" -o allow_other
    CHECK_TIMEOUT=1800 check "pjdfstest ran to the end" run_pjdfstest "$MNT/pjd"
fi

# ---------------------------------------------------------------------------
# Results: one line per test, "NAME <padding> ok|FAILED|skipped|...", with the
# panic message of a failed test on the tab-indented lines after it.

if [[ -s $OUT ]]; then
    sed 's/\x1b\[[0-9;]*m//g' "$OUT" >"$WORK/report"
    awk '/^[^ \t]+ +(ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY)$/ {
            name = $1; status = $0; sub(/^[^ \t]+ +/, "", status); print name "\t" status }' \
        "$WORK/report" >"$WORK/results"
    sed -e 's/#.*//' -e 's/[[:space:]]//g' "$KNOWN" | grep -v '^$' | LC_ALL=C sort -u >"$WORK/known" || true

    n_ok=$(awk -F'\t' '$2 == "ok"' "$WORK/results" | wc -l)
    n_skip=$(awk -F'\t' '$2 == "skipped"' "$WORK/results" | wc -l)
    awk -F'\t' '$2 == "FAILED" { print $1 }' "$WORK/results" | LC_ALL=C sort -u >"$WORK/failed"
    awk -F'\t' '$2 == "ok" { print $1 }' "$WORK/results" | LC_ALL=C sort -u >"$WORK/passed"
    comm -23 "$WORK/failed" "$WORK/known" >"$WORK/regressions"
    comm -12 "$WORK/failed" "$WORK/known" >"$WORK/known-failed"
    comm -12 "$WORK/passed" "$WORK/known" >"$WORK/fixed"

    echo
    echo "pjdfstest: $n_ok passed, $(wc -l <"$WORK/failed") failed ($(wc -l <"$WORK/known-failed") known), $n_skip skipped"
    PASS=$((PASS + n_ok))
    while IFS= read -r t; do
        FAIL=$((FAIL + 1))
        FAILED_NAMES+="  pjdfstest $t"$'\n'
        echo "FAIL - pjdfstest $t (not in $(basename "$KNOWN"))"
        # the panic message: the indented lines after the test's line
        awk -v t="$t" '$1 == t && / FAILED$/ { on = 1; next } on && /^\t/ { print "     | " $0; next } { on = 0 }' \
            "$WORK/report" | head -n 5
    done <"$WORK/regressions"
    if [[ -s $WORK/fixed ]]; then
        echo "known failures that pass now (remove them from $(basename "$KNOWN")):"
        sed 's/^/  /' "$WORK/fixed"
    fi
fi

if [[ -z $PLAIN_DIR ]]; then
    umount_step "umount after pjdfstest" "$MNT"
fi
e2e_finish

#!/usr/bin/env bash
# Soak test (not run by CI): the fsx suite (tests/e2e/fsx.sh) with a million
# operations, on one volume block size and one seed, with every operation
# including fallocate and punch hole, then umount and a check from an empty
# cache that the file holds what fsx expects.
#
# Usage: scripts/soak.sh [BLOCK_SIZE [SEED [OPS]]]   (default: 1M 1 1000000)
#   e.g. scripts/soak.sh 64K 7
# Environment: as for tests/e2e/fsx.sh; the store is a local directory
# unless E2E_URL (and E2E_ENDPOINT) say otherwise. FSX_FALLOCATE=0 runs
# without fallocate. CHECK_TIMEOUT (default 12 hours) bounds each run.
# Needs the fsx binary (scripts/test.sh installs it; to install the tools
# only: E2E_SUITES= E2E_BACKENDS= SKIP_CARGO=1 scripts/test.sh) and a built
# target/release/s3vault.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BS=${1:-1M}
SEED=${2:-1}
OPS=${3:-1000000}

: "${FSX:=${S3VAULT_TOOLS:-$HOME/.cache/s3vault-tools}/bin/fsx}"
if [[ ! -x $FSX ]]; then
    echo "fsx not found at $FSX; install it with: E2E_SUITES= E2E_BACKENDS= SKIP_CARGO=1 scripts/test.sh" >&2
    exit 1
fi

# fsx 0.3.2 never unmaps its mapped reads, so a long run reaches the
# kernel's limit of mappings per process (vm.max_map_count, 65530 by
# default) and its next mmap fails with ENOMEM. Raise the limit for the run.
MAPS_NEEDED=$((OPS / 4 + 65536))
if (($(cat /proc/sys/vm/max_map_count) < MAPS_NEEDED)); then
    echo "raising vm.max_map_count to $MAPS_NEEDED (fsx leaks its read mappings)"
    sysctl -q -w vm.max_map_count=$MAPS_NEEDED
fi

echo "=== $(date +%H:%M:%S) soak: fsx $OPS ops, block $BS, seed $SEED"
start=$SECONDS
rc=0
FSX=$FSX FSX_OPS=$OPS FSX_BLOCK_SIZES=$BS FSX_SEEDS=$SEED CHECK_TIMEOUT=${CHECK_TIMEOUT:-43200} \
    bash "$REPO/tests/e2e/fsx.sh" || rc=$?
if ((rc == 0)); then result=PASSED; else result="FAILED (exit $rc)"; fi
echo "=== $(date +%H:%M:%S) soak: fsx $OPS ops, block $BS, seed $SEED: $result in $((SECONDS - start)) s"
exit "$rc"

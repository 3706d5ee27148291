#!/usr/bin/env bash
# Volumes whose metadata is in PostgreSQL (`init --metadata`): what such a
# volume keeps where, how its connection string is taken and refused, and
# the commands that do not handle it yet. Runs on the "pg" backend only
# (test.sh: file store, E2E_METADATA naming the test cluster); the common
# suites (basic, pjdfstest, fsx, confidentiality) also run there.
#
# Usage: E2E_METADATA=postgresql://USER@127.0.0.1:PORT/DB bash tests/e2e/shared.sh
# Functions here are mostly run indirectly, through `check`.
# shellcheck disable=SC2317
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init shared
[[ -n ${E2E_METADATA:-} ]] || abort "E2E_METADATA must name a PostgreSQL database"

KEY=$WORK/key
URL=$(vol_url shared)
DB=$E2E_METADATA

# init URL ARGS...: init without the suite-wide --metadata.
init() {
    E2E_METADATA="" sv_init "$@"
}

# Nothing of the volume's metadata is in the store: only the superblock,
# data packs, audit segments (and the lease while mounted).
only_data_in_store() {
    local keys
    keys=$(store_ls "$URL" | cut -d/ -f1 | sort -u | tr '\n' ' ')
    echo "top-level keys: $keys"
    [[ $keys != *meta* && $keys != *journal* && $keys == *superblock* && $keys == *data* ]]
}

superblock_format() { # URL: the format version field
    store_get "$1" superblock "$WORK/sb"
    od -An -j8 -N2 -tu1 "$WORK/sb" | awk '{ print $1 * 256 + $2 }'
}

# Without a key, only that the metadata is elsewhere; with one, where
# (never the password).
info_names_the_database() {
    "$S3VAULT" info "$URL" | grep -x 'metadata *in PostgreSQL (unlock to see where)'
    "$S3VAULT" info "$URL" --key-file "$KEY" | grep -E '^metadata +postgresql://[^:@]*@127\.0\.0\.1:[0-9]+/.* \(PostgreSQL\)$'
}

require "keygen" sv_keygen "$KEY"

# A password in argv is readable by every user (ps): refused, nothing made.
check "a password in --metadata is refused" expect_exit 2 'password.*PGPASSWORD|--metadata-file' \
    init "$URL-pw" --key-file "$KEY" --metadata "${DB/@/:secret@}"
check "...and no volume was made" expect_fail 'no s3vault volume' "$S3VAULT" info "$URL-pw"
check "an unreachable database is named, without its password" expect_exit 1 \
    'unreachable.*postgresql://nobody@127\.0\.0\.1:1/' \
    env PGPASSWORD=hunter2 "$S3VAULT" init "$URL-down" --key-file "$KEY" --metadata postgresql://nobody@127.0.0.1:1/x
check "a malformed connection string is a usage error" expect_exit 2 'connection string' \
    init "$URL-bad" --key-file "$KEY" --metadata 'postgresql://u@h/d?nonsense=1'

# The connection string from a file, password included (trust auth on the
# test cluster ignores it; what matters is where it is kept).
echo "$DB?application_name=s3vault-e2e" >"$WORK/metadata.conn"
chmod 600 "$WORK/metadata.conn"
require "init with --metadata-file" init "$URL" --key-file "$KEY" --metadata-file "$WORK/metadata.conn"
check "the superblock is format 4 (metadata elsewhere)" test "$(superblock_format "$URL")" = 4
check "info says where the metadata is, to key holders only" info_names_the_database

MNT=$WORK/mnt
require "mount" sv_mount "$URL" "$MNT" "$WORK/cache-a" --key-file "$KEY"
mkdir -p "$MNT/a/b"
head -c 3000000 /dev/urandom >"$WORK/blob"
cp "$WORK/blob" "$MNT/a/b/blob"
echo small >"$MNT/a/small"
ln "$MNT/a/small" "$MNT/a/hard"
ln -s b/blob "$MNT/a/link"
check "umount" sv_umount "$MNT"
check "the store holds data, no metadata" only_data_in_store

# Another cache directory: everything comes from the database and the store.
require "mount from an empty cache dir" sv_mount "$URL" "$MNT" "$WORK/cache-b" --key-file "$KEY"
check "file contents" cmp "$WORK/blob" "$MNT/a/b/blob"
check "hard link" test "$(stat -c %h "$MNT/a/small")" = 2
check "symlink" test "$(readlink "$MNT/a/link")" = b/blob
rm "$MNT/a/b/blob"
check "umount" sv_umount "$MNT"
check "the deleted file's packs are gone from the store" test "$(store_ls "$URL" | grep -c '^data/')" -le 1

# fsck reads the live state from the database; a snapshot is refused only
# where it is missing; recover, which reads an embedded writer's cache
# database, says why it does not apply, in one line.
check "fsck of it: clean (exit 0)" "$S3VAULT" fsck "$URL" --key-file "$KEY"
check "mount --snapshot of a snapshot never made is refused (exit 2)" sv_mount_refused 2 'no snapshot named' \
    "$URL" "$WORK/mnt-snap" "$WORK/cache-snap" --key-file "$KEY" --snapshot before
check "recover refuses it" expect_exit 2 'PostgreSQL' \
    "$S3VAULT" recover "$URL" "$WORK/cache-b" --to "$WORK/recovered" --key-file "$KEY"

# ---------------------------------------------------------------------------
# An outage of the database: a private cluster, stopped and started again
# under a mounted volume. Operations that need it fail with EIO (the
# default policy), nothing closed is lost, the mount reconnects by itself,
# and the log says so once, not once per operation.

PG_BINS=(/usr/lib/postgresql/*/bin)
PG_BIN=${E2E_PG_BIN:-${PG_BINS[-1]}}
PG_DATA=$WORK/pg/data
PG_PORT=$(free_port)

private_cluster() {
    # The cluster belongs to the "postgres" user (initdb refuses root).
    chmod 711 "$WORK"
    mkdir -p "$WORK/pg"
    chown postgres: "$WORK/pg"
    setpriv --reuid=postgres --regid=postgres --init-groups -- \
        "$PG_BIN/initdb" -D "$PG_DATA" -U vault -A trust --no-sync >"$WORK/logs/initdb.log" 2>&1
}

start_pg() {
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$PG_BIN/postgres" -D "$PG_DATA" -p "$PG_PORT" \
        -k "$WORK/pg" -c listen_addresses=127.0.0.1 -c fsync=off >>"$WORK/logs/postgres.log" 2>&1 &
    # `check` runs this in a subshell: the pid goes to a file.
    echo $! >"$WORK/pg.pid"
    echo $! >>"$WORK/pids"
    for _ in $(seq 100); do
        "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && return 0
        sleep 0.1
    done
    return 1
}

stop_pg() {
    local pid
    pid=$(cat "$WORK/pg.pid")
    kill -INT "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

# fails_with_eio CMD...: CMD fails, saying "Input/output error", within 30 s.
fails_with_eio() {
    local out rc=0
    out=$(timeout 30 "$@" 2>&1) || rc=$?
    echo "exit $rc: $out"
    ((rc != 0 && rc != 124)) && [[ $out == *"Input/output error"* ]]
}

# eventually CMD...: CMD succeeds within 20 s.
eventually() {
    for _ in $(seq 40); do
        "$@" 2>/dev/null && return 0
        sleep 0.5
    done
    "$@"
}

count_in_log() { # PATTERN [CACHE]: lines of the daemon log (of cache-o) matching it
    grep -c -- "$1" "$WORK/${2:-cache-o}/s3vault.log" || true
}

URL_O=$(vol_url outage)
require "a private PostgreSQL cluster" private_cluster
require "start it" start_pg
require "init a volume on it" init "$URL_O" --key-file "$KEY" --metadata "postgresql://vault@127.0.0.1:$PG_PORT/postgres"
require "mount" sv_mount "$URL_O" "$MNT" "$WORK/cache-o" --key-file "$KEY"
require "mount it as a second host" sv_mount "$URL_O" "$WORK/mnt-o2" "$WORK/cache-o2-host" --key-file "$KEY"
echo before >"$MNT/closed-before"
# The holder is the process that keeps the descriptor: killing it drops the lock.
(flock -x 9 && touch "$WORK/o-locked" && exec sleep 600) 9<"$MNT/closed-before" &
LOCKER=$!
echo "$LOCKER" >>"$WORK/pids"
check "a lock is taken" eventually test -e "$WORK/o-locked"
check "stop the database" stop_pg
check "creating a file fails with EIO" fails_with_eio touch "$MNT/during"
check "listing a directory fails with EIO" fails_with_eio ls "$MNT"
check "the log says it once" test "$(count_in_log 'metadata database unreachable')" = 1
check "start the database again" start_pg
check "the mount reconnects by itself" eventually touch "$MNT/after"
check "the log says so" test "$(count_in_log 'reconnected to the metadata database')" -ge 1
check "what was closed before the outage is there" test "$(cat "$MNT/closed-before")" = before
# Past the server's grace period after its start, the lock still counts:
# its host reconnected and holds its liveness lock again.
lock_survives_restart() {
    local up
    up=$("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U vault -d postgres -Atc \
        "SELECT extract(epoch FROM now() - pg_postmaster_start_time())::int")
    ((up >= 16)) || sleep $((16 - up))
    if flock -n "$WORK/mnt-o2/closed-before" true; then return 1; fi
    kill "$LOCKER"
    eventually flock -n "$WORK/mnt-o2/closed-before" true
}
check "a lock held through the restart still excludes the other host, until released" lock_survives_restart
check "umount the second host" sv_umount "$WORK/mnt-o2"
check "status shows the database connected" bash -c "'$S3VAULT' status '$MNT' | grep -E 'database connected +true'"
check "umount" sv_umount "$MNT"
require "mount from an empty cache dir" sv_mount "$URL_O" "$MNT" "$WORK/cache-o2" --key-file "$KEY"
names() { find "$1" -mindepth 1 -printf '%f\n' | sort | tr '\n' ' '; }
check "both files are there, the failed one is not" test "$(names "$MNT")" = "after closed-before "
check "umount" sv_umount "$MNT"

# The other policy, --metadata-outage wait (NFS's hard): an operation
# waits for the database instead of failing, status still answers, and
# the operation completes once the database is back.
require "mount with --metadata-outage wait" sv_mount "$URL_O" "$MNT" "$WORK/cache-o3" --key-file "$KEY" \
    --metadata-outage wait
check "status shows the policy" bash -c "'$S3VAULT' status '$MNT' | grep -E 'database outage policy +wait'"
check "stop the database" stop_pg
touch "$MNT/during-wait" &
WAITER=$!
echo "$WAITER" >>"$WORK/pids"
check "a create waits instead of failing" bash -c "sleep 3; kill -0 $WAITER"
check "status answers meanwhile: the database is not connected" \
    bash -c "timeout 10 '$S3VAULT' status '$MNT' | grep -E 'database connected +false'"
check "the log says operations wait" test "$(count_in_log 'operations wait until it is back' cache-o3)" -ge 1
check "start the database again" start_pg
check "the waiting create completes once it is back" timeout 30 tail --pid="$WAITER" -f /dev/null
check "...and its file is there" test -e "$MNT/during-wait"
check "stop the database again" stop_pg
# An unmount does not wait either: it says why it cannot finish and the
# mount stays, still waiting out outages; once the database is back it
# unmounts. (Nothing here looks into the mount: everything that does
# waits, as on an NFS hard mount.)
umount_during_outage() {
    local rc=0 out
    out=$(timeout 60 "$S3VAULT" umount "$MNT" 2>&1) || rc=$?
    echo "exit $rc: $out"
    ((rc == 1)) && [[ $out == *"stays mounted so nothing is lost"* ]] &&
        grep -q " $MNT fuse" /proc/mounts
}
check "an unmount during the outage fails at once; the mount stays" umount_during_outage
check "...still waiting out outages" bash -c "'$S3VAULT' status '$MNT' | grep -E 'database outage policy +wait'"
check "start it again" start_pg
# The mount tries the server at most once a second: the first unmount
# right after the start may still find it gone.
require "umount once it is back" eventually sv_umount "$MNT"
plain_refuses_outage_policy() {
    local url rc=0 out
    url=$(vol_url plain-outage)
    init "$url" --key-file "$KEY" >/dev/null
    mkdir -p "$WORK/nowhere"
    out=$("$S3VAULT" mount "$url" "$WORK/nowhere" --cache-dir "$WORK/cache-plain" --key-file "$KEY" \
        --metadata-outage wait 2>&1) || rc=$?
    echo "exit $rc: $out"
    ((rc == 2)) && [[ $out == *"metadata-outage is for volumes with their metadata in PostgreSQL"* ]]
}
check "a mount refuses --metadata-outage on a volume without PostgreSQL (exit 2)" plain_refuses_outage_policy
check "stop the private cluster" stop_pg

e2e_finish

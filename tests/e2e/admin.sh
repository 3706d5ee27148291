#!/usr/bin/env bash
# Administration on a real mount: the fstab / mount.fuse3 convention (mount
# -T, plain umount(8), unknown options), `s3vault info` without a key, key
# slots (add, remove, passphrase change, the refusals), process hardening
# (no core dumps, locked key memory, no secrets in /proc, private key files
# and cache dirs), logs without file names or contents at trace level, and
# the exit codes and messages of configuration and runtime errors.
#
# Needs root: it runs mount(8) and puts a symlink /usr/local/sbin/s3vault ->
# $S3VAULT for mount.fuse3 to find (removed at the end, only if this suite
# created it).
#
# Usage: [E2E_URL=... E2E_ENDPOINT=...] bash tests/e2e/admin.sh
# Functions here are mostly run indirectly, through `check`.
# shellcheck disable=SC2317
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init admin

# ---------------------------------------------------------------------------
# The mount helper on PATH. mount(8) runs mount.fuse3, which runs `s3vault
# SOURCE MOUNTPOINT -o OPTIONS` through /bin/sh; the helper gets no PATH, so
# sh's default path (/usr/local/sbin first, on Debian) finds it there.

HELPER_LINK=/usr/local/sbin/s3vault
HELPER_CREATED=0
NOBODY_DIR=""
S3VAULT_REAL=$(readlink -f "$S3VAULT")

admin_cleanup() {
    local rc=$?
    set +e
    if ((HELPER_CREATED)) && [[ -L $HELPER_LINK ]]; then
        rm -f "$HELPER_LINK"
    fi
    if [[ -n $NOBODY_DIR && -d $NOBODY_DIR ]]; then
        kill_daemons "$NOBODY_DIR/mnt"
        rm -rf --one-file-system "$NOBODY_DIR"
    fi
    (exit "$rc")
    e2e_cleanup
}
trap admin_cleanup EXIT

if [[ ! -e $HELPER_LINK && ! -L $HELPER_LINK ]]; then
    mkdir -p "$(dirname "$HELPER_LINK")"
    ln -s "$S3VAULT_REAL" "$HELPER_LINK"
    HELPER_CREATED=1
fi

# ---------------------------------------------------------------------------
# Local helpers

KEY=$WORK/key
KEY2=$WORK/key2
PASS1=$WORK/pass1
PASS2=$WORK/pass2
URL=$(vol_url admin)
MNT=$WORK/mnt
MNT_X=$WORK/mnt-refused # mount point of mounts that must fail
DATA=$WORK/data
# Markers for the log check. The secrets themselves are never kept in
# variables: `set -a` would export them into the daemons' environments.
RAND=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
MARK_NAME=PHI-NAME-$RAND
MARK_DATA=PHI-DATA-$RAND

# sv_info URL: `s3vault info` with the S3 options of URL and no key.
sv_info() { # URL [OPTION...]
    local url=$1 opts
    shift
    mapfile -t opts < <(s3_opts "$url")
    timeout 120 "$S3VAULT" info "$url" "${opts[@]}" "$@"
}

# sv_key ACTION URL ARGS...: `s3vault key ACTION URL` with the S3 options.
sv_key() {
    local action=$1 url=$2 opts
    shift 2
    mapfile -t opts < <(s3_opts "$url")
    timeout 120 "$S3VAULT" key "$action" "$url" "${opts[@]}" "$@"
}

# without_endpoint CMD...: CMD without the suite's S3 endpoint (for checks
# that pass an endpoint of their own).
without_endpoint() {
    E2E_ENDPOINT="" "$@"
}

# save_out FILE CMD...: CMD's stdout also goes to FILE, for later steps.
save_out() {
    local file=$1
    shift
    "$@" >"$file"
    cat "$file"
}

# Slot table lines of `info` / `key list`: "  N  ID  KIND  created ...".
slot_lines() {
    grep -E '^ +[0-9]+ +[0-9a-f]+ +(key-file|passphrase|aws-kms) ' || true
}

# slots_are FILE KIND...: the slot table in FILE lists exactly these kinds,
# in this order.
slots_are() {
    local file=$1 got want
    shift
    got=$(slot_lines <"$file" | awk '{ print $3 }' | paste -sd' ')
    want="$*"
    echo "slots: '$got', want '$want'"
    [[ $got == "$want" ]]
}

# key_list_is URL UNLOCK-ARGS -- KIND...: `key list` unlocks and lists
# exactly these slot kinds.
key_list_is() {
    local url=$1 out args=()
    shift
    while [[ $1 != -- ]]; do
        args+=("$1")
        shift
    done
    shift
    out=$(mktemp "$WORK/keylist.XXXXXX")
    sv_key list "$url" "${args[@]}" >"$out"
    cat "$out"
    slots_are "$out" "$@"
}

# info_slots_are URL KIND...: `info` (no key) lists exactly these kinds.
info_slots_are() {
    local url=$1 out
    shift
    out=$(mktemp "$WORK/info.XXXXXX")
    sv_info "$url" >"$out"
    cat "$out"
    slots_are "$out" "$@"
}

info_unchanged() { # URL SAVED: `info` prints the same as before
    local out
    out=$(mktemp "$WORK/info.XXXXXX")
    sv_info "$1" >"$out"
    [[ -s $2 ]] || {
        echo "nothing saved in $2"
        return 1
    }
    diff "$2" "$out"
}

# slot_id_from_add FILE: the id printed by `key add` ("added key slot ID").
slot_id_from_add() {
    sed -n 's/^added key slot \([0-9a-f][0-9a-f]*\)$/\1/p' "$1"
}

# slot_absent URL ID: `info` no longer lists the slot.
slot_absent() {
    local out
    out=$(sv_info "$1")
    echo "$out"
    if slot_lines <<<"$out" | awk '{ print $2 }' | grep -qx -- "$2"; then
        echo "slot $2 is still listed"
        return 1
    fi
}

# one_daemon MP: exactly one s3vault daemon (running $S3VAULT) serves MP.
one_daemon() {
    local pids
    pids=$(daemon_pids "$1")
    echo "daemon pids for $1 running $S3VAULT_REAL: ${pids:-none}"
    [[ -n $pids && $pids != *$'\n'* ]]
}

wait_gone() { # PID SECONDS
    local pid=$1 i
    if [[ ! $pid =~ ^[1-9][0-9]*$ ]]; then
        echo "no daemon pid to wait for"
        return 1
    fi
    for ((i = 0; i < $2 * 10; i++)); do
        if [[ ! -d /proc/$pid ]]; then
            echo "pid $pid exited after about $((i / 10)) s"
            return 0
        fi
        sleep 0.1
    done
    echo "pid $pid still running after $2 s: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
    return 1
}

same_file() { # A B
    cmp "$1" "$2"
    echo "$2: $(stat -c %s "$2") bytes, same as $1"
}

# --- fstab -----------------------------------------------------------------

# fstab_opts URL CACHE [EXTRA]: the options field of an fstab line.
fstab_opts() {
    local url=$1 cache=$2 extra=${3:-} o
    o="key_file=$KEY,cache_dir=$cache,allow_other,_netdev,nofail,x-systemd.automount"
    if [[ $url == s3://* && -n $E2E_ENDPOINT ]]; then
        o+=",endpoint=$E2E_ENDPOINT,path_style,region=us-east-1"
    fi
    echo "$o$extra"
}

# fstab_mount FSTAB MP: mount(8) from a private fstab file; MP must be a
# mount point afterwards.
fstab_mount() {
    echo "+ mount -T $1 $2 (fstab line: $(cat "$1"))"
    timeout -k 5 "$MOUNT_TIMEOUT" mount -T "$1" "$2"
    if ! mountpoint -q "$2"; then
        echo "mount -T exited 0 but $2 is not a mount point"
        return 1
    fi
}

# mount_table_has MP OPTION: the kernel's mount table lists MP with OPTION.
mount_table_has() {
    findmnt -n -o SOURCE,FSTYPE,OPTIONS --mountpoint "$1"
    findmnt -n -o OPTIONS --mountpoint "$1" | tr ',' '\n' | grep -qx -- "$2"
}

# mount_table_type MP FSTYPE: ... with this file system type (as fstab says).
mount_table_type() {
    local t
    t=$(findmnt -n -o FSTYPE --mountpoint "$1")
    echo "file system type: $t"
    [[ $t == "$2" ]]
}

write_read_back() { # MP
    cp "$DATA" "$1/data"
    echo "written through the fstab mount" >"$1/small"
    same_file "$DATA" "$1/data"
    [[ $(cat "$1/small") == "written through the fstab mount" ]]
}

plain_umount() { # MP
    timeout -k 5 "$UMOUNT_TIMEOUT" umount "$1"
    if mountpoint -q "$1"; then
        echo "umount exited 0 but $1 is still mounted"
        return 1
    fi
}

fstab_refused() { # FSTAB MP PATTERN
    expect_fail "$3" timeout -k 5 "$MOUNT_TIMEOUT" mount -T "$1" "$2"
    if mountpoint -q "$2"; then
        echo "but $2 got mounted"
        return 1
    fi
}

data_there() { # MP
    same_file "$DATA" "$1/data"
    [[ $(cat "$1/small") == "written through the fstab mount" ]]
}

# --- hardening -------------------------------------------------------------

core_limit_zero() { # PID
    local soft hard
    grep -E '^Max core file size' "/proc/$1/limits"
    read -r soft hard < <(prlimit --pid "$1" --core --output SOFT,HARD --noheadings)
    echo "prlimit: soft $soft, hard $hard"
    [[ $soft == 0 && $hard == 0 ]]
}

memory_locked() { # PID
    local kb
    kb=$(awk '$1 == "VmLck:" { print $2 }' "/proc/$1/status")
    echo "VmLck: ${kb:-?} kB"
    [[ -n $kb ]] && ((kb > 0))
}

# no_secret_in_proc PID SECRET-FILE: the secret (a key file's hex, or a
# passphrase file's first line) is neither in the daemon's environment nor
# in its command line.
no_secret_in_proc() {
    local pid=$1 secret f
    secret=$(head -n 1 "$2")
    [[ ${#secret} -ge 8 ]] || {
        echo "cannot read the secret from $2"
        return 1
    }
    for f in environ cmdline; do
        # (procfs files have size 0: copy before testing for content)
        cat "/proc/$pid/$f" >"$WORK/proc-$f"
        if [[ ! -s $WORK/proc-$f ]]; then
            echo "/proc/$pid/$f is empty: nothing to check"
            return 1
        fi
        if grep -aqF -- "$secret" "$WORK/proc-$f"; then
            echo "the secret of $2 is in /proc/$pid/$f"
            return 1
        fi
        echo "/proc/$pid/$f: $(wc -c <"$WORK/proc-$f") bytes, no secret"
    done
}

# Not dumpable (PR_SET_DUMPABLE 0). Root may read any process's /proc files,
# so this is seen on a process of an unprivileged user: the kernel makes the
# /proc/PID files of a non-dumpable process belong to root, and that user
# cannot read them. `s3vault mount` is run as nobody against a store nobody
# listens on: its daemon waits there (retrying) for about ten seconds.
not_dumpable_as_nobody() {
    local dir=$NOBODY_DIR mp=$NOBODY_DIR/mnt port pids pid mount_pid sleeper owner rc=0 bad=0 i
    local -a nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    port=$(free_port)
    HOME=$dir "${nobody[@]}" "$S3VAULT" mount "s3://s3vault-test/admin-nobody" "$mp" --key-file "$dir/key" \
        --cache-dir "$dir/cache" --endpoint "http://127.0.0.1:$port" --path-style >"$dir/out" 2>&1 &
    mount_pid=$!
    for ((i = 0; i < 100; i++)); do
        pids=$(daemon_pids "$mp")
        [[ -z $pids ]] || break
        sleep 0.05
    done
    # past the first instructions of main(), where the flag is set
    sleep 1
    pids=$(daemon_pids "$mp")
    if [[ -z $pids ]]; then
        echo "no s3vault process of nobody found; its output:"
        cat "$dir/out"
        return 1
    fi
    for pid in $pids; do
        owner=$(stat -c %u "/proc/$pid/environ")
        echo "pid $pid (uid $(stat -c %u "/proc/$pid")): /proc/$pid/environ belongs to uid $owner"
        if [[ $owner != 0 ]]; then
            bad=1
        fi
        if "${nobody[@]}" cat "/proc/$pid/environ" >/dev/null 2>&1; then
            echo "nobody can read /proc/$pid/environ"
            bad=1
        fi
    done
    # control: a dumpable process of nobody has files of its own
    "${nobody[@]}" sleep 30 &
    sleeper=$!
    sleep 0.5
    owner=$(stat -c %u "/proc/$sleeper/environ")
    kill "$sleeper"
    echo "control: /proc/PID/environ of nobody's sleep belongs to uid $owner"
    [[ $owner == 65534 ]] || bad=1
    wait "$mount_pid" || rc=$?
    echo "the mount exited $rc: $(cat "$dir/out")"
    ((bad == 0))
}

# --- logs ------------------------------------------------------------------

# log_activity ROOT: names with MARK_NAME, contents with MARK_DATA, renames,
# removals, and operations that fail (errors tend to be logged with names).
log_activity() {
    local r=$1 d i
    d=$r/dir-$MARK_NAME
    mkdir "$d" "$d/sub-$MARK_NAME"
    for i in 1 2 3; do
        for _ in $(seq 2000); do echo "$MARK_DATA line $i"; done >"$d/file-$MARK_NAME-$i"
    done
    printf '%s' "$MARK_DATA" >"$r/tiny-$MARK_NAME"
    ln -s "target-$MARK_NAME" "$r/link-$MARK_NAME"
    mv "$d/file-$MARK_NAME-1" "$d/sub-$MARK_NAME/renamed-$MARK_NAME"
    mv "$d/sub-$MARK_NAME" "$r/moved-$MARK_NAME"
    rm "$d/file-$MARK_NAME-2"
    if rmdir "$d" 2>/dev/null; then
        echo "rmdir of a non-empty directory succeeded"
        return 1
    fi
    if ls "$r/missing-$MARK_NAME" 2>/dev/null; then
        echo "a missing name was found"
        return 1
    fi
    if mkdir "$d" 2>/dev/null; then
        echo "mkdir of an existing directory succeeded"
        return 1
    fi
    if mv "$r/missing-$MARK_NAME" "$r/other-$MARK_NAME" 2>/dev/null; then
        echo "rename of a missing name succeeded"
        return 1
    fi
    rm "$d/file-$MARK_NAME-3"
    rmdir "$d"
    sync
    # positive control: the names and contents are really in the file system
    grep -qF -- "$MARK_DATA" "$r/moved-$MARK_NAME/renamed-$MARK_NAME"
    [[ $(cat "$r/tiny-$MARK_NAME") == "$MARK_DATA" ]]
    [[ $(readlink "$r/link-$MARK_NAME") == "target-$MARK_NAME" ]]
    [[ ! -e $d ]]
    find "$r" -name "*$MARK_NAME*" | sort
}

log_mount() { # MP CACHE ARGS...: sv_mount with its output kept for scanning
    local rc=0
    sv_mount "$URL" "$@" >"$WORK/trace-mount.out" 2>&1 || rc=$?
    cat "$WORK/trace-mount.out"
    return "$rc"
}

log_not_empty() { # LOG
    local n
    n=$(grep -c . "$1" || true)
    echo "$1: $n lines"
    ((n > 0))
    echo "--- first lines:"
    head -n 5 "$1"
}

log_has_debug() { # LOG: the trace level took effect
    local n
    n=$(grep -acE '(DEBUG|TRACE) ' "$1" || true)
    echo "$n debug/trace lines"
    ((n > 0))
}

# no_marker_in FILE...: neither marker, nor their random part, in the files.
no_marker_in() {
    local f m bad=0
    for f in "$@"; do
        [[ -f $f ]] || {
            echo "$f does not exist"
            return 1
        }
        for m in "$MARK_NAME" "$MARK_DATA" "$RAND"; do
            if grep -aqF -- "$m" "$f"; then
                echo "FOUND $m in $f:"
                grep -anF -- "$m" "$f" | head -n 5
                bad=1
            fi
        done
        echo "$f: $(wc -c <"$f") bytes scanned"
    done
    ((bad == 0))
}

# ---------------------------------------------------------------------------
# Setup

head -c $((3 << 20)) /dev/urandom >"$DATA"
printf 'correct horse %s\n' "$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$PASS1"
printf 'battery staple %s\n' "$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$PASS2"
chmod 600 "$PASS1" "$PASS2"

require "keygen" sv_keygen "$KEY"
require "keygen (second key)" sv_keygen "$KEY2"
require "init $URL (64K chunks)" save_out "$WORK/init.out" sv_init "$URL" --chunk-size 64K --key-file "$KEY"
VOLID=$(sed -n 's/^created volume \([0-9a-f]*\) .*/\1/p' "$WORK/init.out")
echo "volume id $VOLID"

# ---------------------------------------------------------------------------
# info: no key needed

info_ok() { # URL VOLID SLOTS
    local out
    out=$(mktemp "$WORK/info.XXXXXX")
    sv_info "$1" >"$out"
    cat "$out"
    [[ -n $2 ]] || {
        echo "no volume id from init"
        return 1
    }
    grep -qE '^format version +3$' "$out" || { echo "no 'format version 3'"; return 1; }
    grep -qE '^revision +1$' "$out" || { echo "no 'revision 1'"; return 1; }
    grep -qE "^volume id +$2\$" "$out" || { echo "no 'volume id $2'"; return 1; }
    grep -qE '^chunk size +65536 bytes$' "$out" || { echo "no 'chunk size 65536 bytes'"; return 1; }
    grep -qE "^key slots +$3\$" "$out" || { echo "no 'key slots $3'"; return 1; }
    slots_are "$out" key-file
}
check "info without a key: format 3, volume id, chunk size, revision, one key-file slot" info_ok "$URL" "$VOLID" 1
info_with_key() { # URL
    local out
    out=$(sv_info "$1" --key-file "$KEY") || return 1
    echo "$out"
    grep -qE '^generation +1$' <<<"$out" || { echo "no 'generation 1' (a new volume's)"; return 1; }
    grep -qE '^chain head +[0-9a-f]{64}$' <<<"$out" || { echo "no chain head"; return 1; }
}
check "info with the key: the live generation and its chain head" info_with_key "$URL"
sv_info "$URL" >"$WORK/info-initial.out" 2>/dev/null || true
KEYFILE_SLOT=$(slot_lines <"$WORK/info-initial.out" | awk '$3 == "key-file" { print $2 }' | head -n 1)
echo "key-file slot id: ${KEYFILE_SLOT:-none}"

# ---------------------------------------------------------------------------
# fstab and mount.fuse3

check "the mount helper $HELPER_LINK resolves to $S3VAULT_REAL" \
    test "$(readlink -f "$HELPER_LINK")" = "$S3VAULT_REAL"

FSTAB=$WORK/fstab
CACHE_F=$WORK/cache-fstab
echo "$URL $MNT fuse.s3vault $(fstab_opts "$URL" "$CACHE_F") 0 0" >"$FSTAB"
mkdir -p "$MNT"
echo "$MNT" >>"$WORK/mounts"
printf '%s\t%s\n' "$MNT" "$CACHE_F" >>"$WORK/mount-caches"
require "mount -T fstab (fuse.s3vault, key_file=, cache_dir=, allow_other, _netdev, nofail, x-systemd.automount)" \
    fstab_mount "$FSTAB" "$MNT"
check "the fstab mount's daemon runs $S3VAULT" one_daemon "$MNT"
FSTAB_PID=$(daemon_pids "$MNT" | head -n 1)
check "mount table: allow_other applied" mount_table_has "$MNT" allow_other
check "mount table: type fuse.s3vault" mount_table_type "$MNT" fuse.s3vault
check "fstab mount: write a 3 MiB file and a small one, read them back" write_read_back "$MNT"
check "umount(8) unmounts the fstab mount" plain_umount "$MNT"
if mountpoint -q "$MNT"; then
    force_unmount "$MNT"
    abort "$MNT is still mounted after umount(8)"
fi
check "the daemon exits after umount(8) (within 120 s)" wait_gone "${FSTAB_PID:-0}" 120
kill_daemons "$MNT"

require "s3vault mount after the fstab mount, from an empty cache dir" \
    sv_mount "$URL" "$MNT" "$WORK/cache-after-fstab" --key-file "$KEY"
check "the files written through the fstab mount reached the store" data_there "$MNT"
umount_step "umount" "$MNT"

FSTAB_BAD=$WORK/fstab-bogus
echo "$URL $MNT fuse.s3vault $(fstab_opts "$URL" "$CACHE_F" ,bogus_option) 0 0" >"$FSTAB_BAD"
check "mount -T with an unknown option fails and names it" fstab_refused "$FSTAB_BAD" "$MNT" bogus_option
kill_daemons "$MNT"

# ---------------------------------------------------------------------------
# Hardening

CACHE_H=$WORK/cache-hardening
require "mount with the key file" sv_mount "$URL" "$MNT" "$CACHE_H" --key-file "$KEY"
check "one daemon serves the mount" one_daemon "$MNT"
PID=$(daemon_pids "$MNT" | head -n 1)
check "daemon: core file size limit 0 (soft and hard)" core_limit_zero "${PID:-0}"
check "daemon: key material locked in memory (VmLck > 0)" memory_locked "${PID:-0}"
check "daemon: the key file's hex is not in /proc/PID/environ nor cmdline" no_secret_in_proc "${PID:-0}" "$KEY"
check "daemon: data readable" data_there "$MNT"
umount_step "umount" "$MNT"

cp "$KEY" "$WORK/key-0644"
chmod 644 "$WORK/key-0644"
NOBODY_DIR=$(mktemp -d /tmp/s3vault-e2e-admin-nobody.XXXXXX)
mkdir -p "$NOBODY_DIR/mnt"
cp "$KEY" "$NOBODY_DIR/key"
chown -R 65534:65534 "$NOBODY_DIR"
chmod 755 "$NOBODY_DIR"
echo "$NOBODY_DIR/mnt" >>"$WORK/mounts"
check "daemon is not dumpable (seen as user nobody: its /proc files belong to root)" not_dumpable_as_nobody

check "a key file with mode 0644 is refused (exit 2, chmod)" \
    sv_mount_refused 2 'chmod|permission|accessible' "$URL" "$MNT_X" "$WORK/cache-x" --key-file "$WORK/key-0644"
mkdir -p "$WORK/cache-0777" "$WORK/cache-0770"
chmod 777 "$WORK/cache-0777"
chmod 770 "$WORK/cache-0770"
check "a cache dir with mode 0777 is refused (exit 2)" \
    sv_mount_refused 2 'writable|chmod|permission' "$URL" "$MNT_X" "$WORK/cache-0777" --key-file "$KEY"
check "a cache dir with mode 0770 (group writable) is refused (exit 2)" \
    sv_mount_refused 2 'writable|chmod|permission' "$URL" "$MNT_X" "$WORK/cache-0770" --key-file "$KEY"

# ---------------------------------------------------------------------------
# Logs carry no names or contents, even at trace level

CACHE_L=$WORK/cache-log
echo "log markers: $MARK_NAME $MARK_DATA"
require "mount with --log-level trace" log_mount "$MNT" "$CACHE_L" --key-file "$KEY" --log-level trace
check "create, write, rename, remove names with the marker; failing lookups" log_activity "$MNT"
# Two daemons sharing one cache directory would corrupt each other's state.
check "a second mount of the same cache directory is refused (exit 2, in use)" \
    sv_mount_refused 2 'in use by another s3vault mount' "$URL" "$MNT_X" "$CACHE_L" --key-file "$KEY"
check "the first mount is unharmed" test -d "$MNT/."
mounted_twice() {
    local opts
    mapfile -t opts < <(s3_opts "$URL")
    expect_exit 2 "is already an s3vault mount of ${URL//./\\.} \(pid [0-9]+\)" \
        timeout 60 "$S3VAULT" mount "$URL" "$MNT" --cache-dir "$WORK/cache-twice" --key-file "$KEY" "${opts[@]}" &&
        [[ -f $CACHE_L/s3vault.log ]] && mountpoint -q "$MNT" && test -d "$MNT/."
}
check "a second mount at the same mount point: 'already an s3vault mount of URL (pid N)' (exit 2), the first unharmed" \
    mounted_twice
same_host_writer_named() {
    local err=$WORK/same-host.err
    sv_mount_refused 2 "already mounted read-write on this host by s3vault pid [0-9]+ at $MNT" \
        "$URL" "$MNT_X" "$WORK/cache-second-writer" --key-file "$KEY" | tee "$err"
    ! grep -q -- --force-takeover "$err" || { echo "suggests a takeover of a live local mount"; return 1; }
}
check "the volume read-write from another cache dir on the same host: names the live mount, no takeover advice" \
    same_host_writer_named
umount_step "umount (trace)" "$MNT"

non_empty_mount_point() {
    local mp=$WORK/mnt-occupied
    mkdir -p "$mp"
    echo "underneath" >"$mp/already-here"
    sv_mount_refused 2 "mount point $mp is not empty \(1 entries.*--allow-non-empty" \
        "$URL" "$mp" "$WORK/cache-occupied" --key-file "$KEY" || return 1
    sv_mount "$URL" "$mp" "$WORK/cache-occupied" --key-file "$KEY" -o nonempty
    [[ ! -e $mp/already-here ]] || { echo "the mount does not cover the directory"; return 1; }
    sv_umount "$mp"
    [[ $(cat "$mp/already-here") == underneath ]]
}
check "a non-empty mount point is refused (exit 2) unless -o nonempty; its files are back after unmount" \
    non_empty_mount_point
check "-o ro,rw: refused as conflicting (exit 2)" \
    sv_mount_refused 2 "ro and rw conflict" "$URL" "$MNT_X" "$WORK/cache-conflict" --key-file "$KEY" -o ro,rw
check "the daemon log is not empty" log_not_empty "$CACHE_L/s3vault.log"
check "the daemon log has debug/trace lines (the level took effect)" log_has_debug "$CACHE_L/s3vault.log"
check "no file name or content marker in the daemon log or the mount's output" \
    no_marker_in "$CACHE_L/s3vault.log" "$WORK/trace-mount.out"

# ---------------------------------------------------------------------------
# Key slots

check "key list with the key file: one key-file slot" key_list_is "$URL" --key-file "$KEY" -- key-file
cp "$PASS1" "$WORK/pass-0640"
chmod 640 "$WORK/pass-0640"
check "key add with a passphrase file of mode 0640 is refused (exit 2)" \
    expect_exit 2 'chmod|permission|accessible' sv_key add "$URL" --key-file "$KEY" --new-passphrase-file "$WORK/pass-0640"
check "key add --new-passphrase-file (unlocked with the key file)" \
    save_out "$WORK/add-pass1.out" sv_key add "$URL" --key-file "$KEY" --new-passphrase-file "$PASS1"
PASS1_SLOT=$(slot_id_from_add "$WORK/add-pass1.out")
echo "passphrase 1 slot id: ${PASS1_SLOT:-none}"
check "key list: two slots (key-file, passphrase)" key_list_is "$URL" --key-file "$KEY" -- key-file passphrase
check "info (no key) lists the two slots" info_slots_are "$URL" key-file passphrase

CACHE_P=$WORK/cache-pass
require "mount with the passphrase file" sv_mount "$URL" "$MNT" "$CACHE_P" --passphrase-file "$PASS1"
check "passphrase mount reads the data written with the key" data_there "$MNT"
PID=$(daemon_pids "$MNT" | head -n 1)
check "daemon: the passphrase is not in /proc/PID/environ nor cmdline" no_secret_in_proc "${PID:-0}" "$PASS1"
umount_step "umount (passphrase)" "$MNT"

check "key remove <key-file slot> (unlocked with the passphrase)" \
    sv_key remove "$URL" "${KEYFILE_SLOT:-none}" --passphrase-file "$PASS1"
check "the key-file slot is gone" slot_absent "$URL" "${KEYFILE_SLOT:-none}"
check "key list: one passphrase slot" key_list_is "$URL" --passphrase-file "$PASS1" -- passphrase
check "mount with the removed key file: exit 2, wrong key" \
    sv_mount_refused 2 'wrong key' "$URL" "$MNT_X" "$WORK/cache-x" --key-file "$KEY"
check "removing the last slot is refused (exit 2, last)" \
    expect_exit 2 'last' sv_key remove "$URL" 0 --passphrase-file "$PASS1"
check "the last slot is still there" key_list_is "$URL" --passphrase-file "$PASS1" -- passphrase

check "key add --new-key-file (unlocked with the passphrase)" \
    sv_key add "$URL" --passphrase-file "$PASS1" --new-key-file "$KEY2"
check "removing the slot you unlock with is refused (exit 2)" \
    expect_exit 2 'another|in use|unlock' sv_key remove "$URL" "${PASS1_SLOT:-none}" --passphrase-file "$PASS1"
check "both slots are still there" key_list_is "$URL" --key-file "$KEY2" -- passphrase key-file

# Passphrase change: add the new one, remove the old one with the new one.
check "passphrase change: add the new passphrase" \
    save_out "$WORK/add-pass2.out" sv_key add "$URL" --passphrase-file "$PASS1" --new-passphrase-file "$PASS2"
check "passphrase change: remove the old passphrase's slot" \
    sv_key remove "$URL" "${PASS1_SLOT:-none}" --passphrase-file "$PASS2"
check "key list: key-file and the new passphrase" key_list_is "$URL" --passphrase-file "$PASS2" -- key-file passphrase
check "the old passphrase's slot is gone" slot_absent "$URL" "${PASS1_SLOT:-none}"
check "mount with the old passphrase: exit 2, wrong key" \
    sv_mount_refused 2 'wrong key' "$URL" "$MNT_X" "$WORK/cache-x" --passphrase-file "$PASS1"
require "mount with the new passphrase" sv_mount "$URL" "$MNT" "$CACHE_P" --passphrase-file "$PASS2"
check "new passphrase: the data is there" data_there "$MNT"
umount_step "umount (new passphrase)" "$MNT"

# ---------------------------------------------------------------------------
# AWS KMS key slots. moto serves the KMS API on its S3 port; the other
# backends have no KMS, so this part runs on moto only.

# kms_create_key: creates a KMS key in moto and prints its ARN.
kms_create_key() {
    python3 - "$E2E_ENDPOINT" <<'PY'
import sys
import boto3
kms = boto3.client("kms", endpoint_url=sys.argv[1], region_name="us-east-1")
print(kms.create_key(Description="s3vault admin suite")["KeyMetadata"]["Arn"])
PY
}

# kms_refuses AWS-ERROR PATTERN: mount --kms through a KMS endpoint that
# answers every request with AWS-ERROR must be refused (exit 2, PATTERN).
kms_refuses() {
    local error=$1 pat=$2 port stub rc=0
    port=$(free_port)
    python3 - "$port" "$error" <<'EOF' &
import http.server, json, sys
port, error = int(sys.argv[1]), sys.argv[2]
class Refuse(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"__type": error, "message": f"refused by the test endpoint ({error})"}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("x-amzn-ErrorType", error)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Refuse).serve_forever()
EOF
    stub=$!
    for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    sv_mount_refused 2 "$pat" "$KMS_URL" "$MNT_X" "$WORK/cache-x" --kms --kms-endpoint "http://127.0.0.1:$port" || rc=$?
    kill "$stub"
    wait "$stub" 2>/dev/null || true
    return "$rc"
}

# kms_write MP: a file whose content names this run, to find after remounts.
kms_write() {
    echo "kms-$RAND" >"$1/kms.txt" && [[ $(cat "$1/kms.txt") == "kms-$RAND" ]]
}

kms_read() {
    [[ $(cat "$1/kms.txt") == "kms-$RAND" ]]
}

if [[ $E2E_BACKEND == moto && -n $E2E_ENDPOINT ]]; then
    KMS_URL=$(vol_url kms)
    KMS_OPTS=(--kms-endpoint "$E2E_ENDPOINT")
    require "init a volume for the KMS checks" sv_init "$KMS_URL" --key-file "$KEY2"
    KMS_ARN=$(kms_create_key) || abort "cannot create a KMS key in moto"
    check "key add --new-kms-key-id (unlocked with the key file)" \
        sv_key add "$KMS_URL" --key-file "$KEY2" --new-kms-key-id "$KMS_ARN" "${KMS_OPTS[@]}"
    check "key list: key-file and aws-kms slots" key_list_is "$KMS_URL" --key-file "$KEY2" -- key-file aws-kms
    require "mount with --kms only" sv_mount "$KMS_URL" "$MNT" "$WORK/cache-kms" --kms "${KMS_OPTS[@]}"
    check "KMS mount: write a file" kms_write "$MNT"
    umount_step "umount (KMS)" "$MNT"
    check "key remove of the key-file slot, unlocked through KMS" \
        sv_key remove "$KMS_URL" 0 --kms "${KMS_OPTS[@]}"
    check "mount with the removed key file: exit 2, wrong key" \
        sv_mount_refused 2 'wrong key' "$KMS_URL" "$MNT_X" "$WORK/cache-x" --key-file "$KEY2"
    require "mount with -o kms from an empty cache dir (no secret on disk)" \
        sv_mount "$KMS_URL" "$MNT" "$WORK/cache-kms2" -o "kms,kms_endpoint=$E2E_ENDPOINT"
    check "KMS mount from an empty cache: the file is there" kms_read "$MNT"
    umount_step "umount (KMS, fresh cache)" "$MNT"
    check "--kms on a volume without a KMS slot: exit 2, wrong key" \
        sv_mount_refused 2 'wrong key' "$URL" "$MNT_X" "$WORK/cache-x" --kms "${KMS_OPTS[@]}"
    check "key add with an unknown KMS key: exit 2, names KMS" \
        expect_exit 2 'KMS' sv_key add "$KMS_URL" --kms "${KMS_OPTS[@]}" \
        --new-kms-key-id arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000
    # moto does not enforce key states or policies, so a disabled key and a
    # denied kms:Decrypt come from a KMS endpoint that answers every request
    # the way AWS KMS answers those (same protocol, same error shapes).
    check "mount --kms with the KMS key disabled: exit 2, says disabled" \
        kms_refuses DisabledException 'is disabled'
    check "mount --kms without kms:Decrypt: exit 2, says denied and which action" \
        kms_refuses AccessDeniedException 'denied kms:Decrypt'
fi

# ---------------------------------------------------------------------------
# Metrics

# A mount with --metrics-addr serves Prometheus text: FUSE and store request
# latencies by operation, the figures of `status` as gauges, no file name;
# a port already taken is refused at mount (exit 2).
metrics_scraped() {
    local url mp=$WORK/mnt-metrics out=$WORK/metrics.txt port value
    url=$(vol_url metrics)
    port=$(free_port)
    sv_init "$url" --key-file "$KEY2" >/dev/null
    sv_mount "$url" "$mp" "$WORK/cache-metrics" --key-file "$KEY2" --metrics-addr "127.0.0.1:$port"
    for i in $(seq 20); do echo "content $i" >"$mp/metrics-marker-$i"; done
    cat "$mp"/metrics-marker-* >/dev/null
    sync -f "$mp"
    sleep 6 # the gauges are published every 5 s
    curl -fsS --max-time 10 "http://127.0.0.1:$port/metrics" >"$out"
    expect_exit 2 "metrics-addr 127.0.0.1:$port" timeout 60 "$S3VAULT" mount "$url" "$MNT_X" \
        --cache-dir "$WORK/cache-metrics-2" --key-file "$KEY2" --metrics-addr "127.0.0.1:$port"
    sv_umount "$mp"
    grep -E '^s3vault_(fuse|store)_request_seconds_count' "$out"
    value=$(awk -F' ' '/^s3vault_fuse_request_seconds_count\{op="create"\}/ { print $2 }' "$out")
    [[ ${value:-0} -ge 20 ]] || { echo "creates counted: ${value:-none}"; return 1; }
    grep -qE '^s3vault_fuse_request_seconds_bucket\{op="read",le="0\.001"\} [0-9]+' "$out"
    grep -qE '^s3vault_store_request_seconds_count\{op="put[a-z_]*",outcome="ok"\} [1-9]' "$out"
    grep -qE '^s3vault_cache_[a-z_]+ [0-9]' "$out"
    grep -qE '^s3vault_audit_records [1-9]' "$out"
    if grep -q 'metrics-marker' "$out"; then
        echo "a file name reached the metrics"
        return 1
    fi
}
check "--metrics-addr: Prometheus text with FUSE and store latencies and status gauges, no names; a taken port is refused" \
    metrics_scraped

# ---------------------------------------------------------------------------
# Errors: exit 2 for configuration, 1 for runtime, one-line messages

S3_ELSEWHERE=s3://s3vault-test/admin-elsewhere-${WORK##*.}
check "mount of a URL without a volume: exit 2, points to init" \
    sv_mount_refused 2 's3vault init' "$(vol_url none)" "$MNT_X" "$WORK/cache-x" --key-file "$KEY2"
sv_info "$URL" >"$WORK/info-before-init.out" 2>/dev/null || true
check "init on an existing volume: exit 2, already" \
    expect_exit 2 'already' sv_init "$URL" --key-file "$KEY2"
check "the refused init left the superblock alone" info_unchanged "$URL" "$WORK/info-before-init.out"
check "unknown -o option: exit 2, named" \
    sv_mount_refused 2 'bogus_option' "$URL" "$MNT_X" "$WORK/cache-x" --key-file "$KEY2" -o allow_other,bogus_option
check "mount --endpoint http://10.1.2.3:9000 (plain http, not loopback): exit 2, https" \
    without_endpoint sv_mount_refused 2 'https' "$S3_ELSEWHERE" "$MNT_X" "$WORK/cache-x" \
    --key-file "$KEY2" --endpoint http://10.1.2.3:9000 --path-style
check "mount -o endpoint=http://10.1.2.3:9000: exit 2, https" \
    without_endpoint sv_mount_refused 2 'https' "$S3_ELSEWHERE" "$MNT_X" "$WORK/cache-x" \
    --key-file "$KEY2" -o endpoint=http://10.1.2.3:9000,path_style
check "info --endpoint http://10.1.2.3:9000: exit 2, https" \
    expect_exit 2 'https' timeout 120 "$S3VAULT" info "$S3_ELSEWHERE" --endpoint http://10.1.2.3:9000 --path-style
PORT=$(free_port)
MOUNT_TIMEOUT=120 check "mount with an unreachable loopback endpoint: exit 1, unreachable, store and endpoint named" \
    without_endpoint sv_mount_refused 1 "unreachable: ${S3_ELSEWHERE%/} at http://127.0.0.1:$PORT: " \
    "$S3_ELSEWHERE" "$MNT_X" "$WORK/cache-x" --key-file "$KEY2" --endpoint "http://127.0.0.1:$PORT" --path-style
# On a terminal the wait is not silence: a line per failed attempt, naming
# the store, the endpoint and why (script(1) gives the mount a terminal).
says_retrying_on_a_terminal() {
    local out
    out=$(timeout 120 script -qec "$(printf '%q ' "$S3VAULT" mount "$S3_ELSEWHERE" "$MNT_X" --cache-dir "$WORK/cache-x" \
        --key-file "$KEY2" --endpoint "http://127.0.0.1:$PORT" --path-style)" /dev/null) || true
    echo "$out"
    grep -q "waiting for ${S3_ELSEWHERE%/} at http://127.0.0.1:$PORT: retrying (1), last error: .*Connection refused" <<<"$out"
    grep -q "retrying (5)" <<<"$out"
    # The last attempt's failure is the mount's error, not a retry.
    if grep -q "retrying (6)" <<<"$out"; then return 1; fi
    grep -q "unreachable: ${S3_ELSEWHERE%/} at http://127.0.0.1:$PORT: " <<<"$out"
    if mountpoint -q "$MNT_X"; then return 1; fi
}
check "mount on a terminal, unreachable endpoint: a retrying line per attempt" says_retrying_on_a_terminal
check "fsck with an unreachable loopback endpoint: exit 8 (could not check), store and endpoint named" \
    expect_exit 8 "unreachable: ${S3_ELSEWHERE%/} at http://127.0.0.1:$PORT: " timeout 120 "$S3VAULT" fsck "$S3_ELSEWHERE" --key-file "$KEY2" \
    --endpoint "http://127.0.0.1:$PORT" --path-style

e2e_finish

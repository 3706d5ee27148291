#!/usr/bin/env bash
# The audit trail on a real mount: two non-root users and root open, create,
# read, write, rename and delete files with ordinary programs (sh, cat, cp,
# mv, rm, python3); `s3vault audit log` must attribute each operation to the
# right user, uid, pid and program, with the right flags and result, and show
# a denied open as EACCES. Records reach the store while mounted, within the
# flush interval. A kill -9 of the daemon after a burst of opens loses none
# of the opens that returned. Tampering with the stored segments (a flipped
# byte, a deleted segment, a truncated segment) is caught by `audit verify`
# with its location; the insider cases that need the key (records deleted,
# reordered or edited and the segment resealed) are unit tests in
# src/audit/tests.rs.
#
# Usage: [E2E_URL=... E2E_ENDPOINT=...] bash tests/e2e/audit.sh
# shellcheck disable=SC2317 # functions run through `check`
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init audit

FLUSH=2
KEY=$WORK/key
URL=$(vol_url audit)
MP=$WORK/mnt
CACHE=$WORK/cache
USERS=(s3v-alice s3v-bob)

# The test users must reach the mount point inside the work dir (the key
# file and the cache directory keep their own 0600/0700 modes).
chmod 755 "$WORK"
for u in "${USERS[@]}"; do
    id "$u" >/dev/null 2>&1 || useradd --no-create-home --shell /bin/sh "$u"
done

# as USER CMD: run a shell command line as USER.
as() {
    local user=$1
    shift
    su -s /bin/sh "$user" -c "$*"
}

# audit_log ARGS...: `s3vault audit log` as JSON lines, into $WORK/log.json.
audit_log() {
    local opts
    mapfile -t opts < <(s3_opts "$URL")
    timeout 120 "$S3VAULT" audit log "$URL" --key-file "$KEY" "${opts[@]}" --format json "$@" >"$WORK/log.json"
}

# expect_record PYTHON-CONDITION [DESCRIPTION]: some record `r` in
# $WORK/log.json satisfies the condition.
expect_record() {
    python3 - "$WORK/log.json" "$1" <<'EOF'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
cond = sys.argv[2]
if not any(eval(cond, {}, {"r": r}) for r in records):
    print(f"no record satisfies: {cond}")
    for r in records[-40:]:
        print(json.dumps({k: r.get(k) for k in ("event", "result", "user", "uid", "pid", "process", "path", "flags")}))
    sys.exit(1)
EOF
}

sv_audit() { # ACTION ARGS...: run an audit subcommand on the volume
    local action=$1 opts
    shift
    mapfile -t opts < <(s3_opts "$URL")
    timeout 120 "$S3VAULT" audit "$action" "$URL" --key-file "$KEY" "${opts[@]}" "$@"
}

setup() {
    sv_keygen "$KEY" >/dev/null
    sv_init "$URL" --key-file "$KEY" >/dev/null
}

fifo_is_guarded() {
    local fifo=$MP/shared/root.fifo
    mkfifo -m 0600 "$fifo"
    # O_RDWR never blocks on a FIFO: it would succeed at once if allowed.
    if as s3v-bob "timeout 5 python3 -c \"import os; os.open('$fifo', os.O_RDWR)\"" 2>/dev/null; then
        echo "bob opened root's 0600 FIFO"
        return 1
    fi
    sleep $((FLUSH + 2))
    audit_log --event open --path /shared/root.fifo
    expect_record 'r["user"] == "s3v-bob" and r["result"] == "EACCES"'
}

write_clears_setuid() {
    local f=$MP/shared/setuid-tool mode
    echo original >"$f"
    chmod 6777 "$f"
    as s3v-bob "echo appended >> $f" || { echo "bob's write was refused"; return 1; }
    mode=$(stat -c %a "$f")
    echo "mode after bob's write: $mode"
    [[ $mode == 777 ]] && grep -qx appended "$f"
    # Clearing the bits by chmod is still the owner's alone.
    chmod 4755 "$f"
    ! as s3v-bob "chmod u-s $f" 2>/dev/null || { echo "bob could chmod root's file"; return 1; }
    [[ $(stat -c %a "$f") == 4755 ]]
}

mount_volume() { # [EXTRA-ARGS...]
    sv_mount "$URL" "$MP" "$CACHE" --key-file "$KEY" -o allow_other --audit-flush-interval "$FLUSH" "$@"
}

workload() {
    mkdir -m 1777 "$MP/shared"
    as s3v-alice "echo 'patient record' > $MP/shared/alice.txt"
    as s3v-alice "cat $MP/shared/alice.txt >/dev/null"
    as s3v-bob "cp $MP/shared/alice.txt $MP/shared/bob-copy.txt"
    as s3v-bob "mv $MP/shared/bob-copy.txt $MP/shared/bob-moved.txt"
    as s3v-bob "python3 -c \"open('$MP/shared/bob-py.txt', 'w').write('x' * 1000)\""
    as s3v-bob "rm $MP/shared/bob-py.txt"
    as s3v-alice "chmod 600 $MP/shared/alice.txt"
    # Refused by s3vault itself (no default_permissions): must be audited.
    if as s3v-bob "cat $MP/shared/alice.txt" 2>/dev/null; then
        echo "bob could read alice's private file"
        return 1
    fi
    cat "$MP/shared/alice.txt" >/dev/null
}

pids_recorded() {
    audit_log --event open,create
    # Every record of a user's open carries a live-looking pid and a program.
    python3 - "$WORK/log.json" <<'EOF'
import json, sys
records = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
users = [r for r in records if r.get("user", "").startswith("s3v-")]
assert users, "no records of the test users"
for r in users:
    assert r["pid"] > 0 and r.get("process") and r.get("exe", "").startswith("/"), r
    assert r["uid"] != 0 and r["host"] and r["volume"] and r["time"].endswith("Z"), r
EOF
}

records_in_store_while_mounted() {
    sleep $((FLUSH + 2))
    mountpoint -q "$MP"
    [[ -n $(store_ls "$URL" audit) ]]
    audit_log --user s3v-alice
    expect_record 'r["event"] == "create" and r["path"] == "/shared/alice.txt" and r["process"] == "sh"'
}

attributed() {
    audit_log
    expect_record 'r["user"] == "s3v-alice" and r["event"] == "create" and r["path"] == "/shared/alice.txt" and "O_CREAT" in r["flags"]'
    expect_record 'r["user"] == "s3v-alice" and r["event"] == "open" and r["process"] == "cat" and r["flags"] == "O_RDONLY" and r["path"] == "/shared/alice.txt"'
    expect_record 'r["user"] == "s3v-alice" and r["event"] == "close" and r["path"] == "/shared/alice.txt" and r.get("bytes_written") == 15'
    expect_record 'r["user"] == "s3v-bob" and r["event"] == "open" and r["process"] == "cp" and r["path"] == "/shared/alice.txt"'
    expect_record 'r["user"] == "s3v-bob" and r["event"] == "create" and r["process"] == "cp" and r["path"] == "/shared/bob-copy.txt"'
    expect_record 'r["user"] == "s3v-bob" and r["event"] == "rename" and r["process"] == "mv" and r["path"] == "/shared/bob-copy.txt" and r["new_path"] == "/shared/bob-moved.txt"'
    expect_record 'r["user"] == "s3v-bob" and r["event"] == "create" and r["process"].startswith("python") and r["path"] == "/shared/bob-py.txt"'
    expect_record 'r["user"] == "s3v-bob" and r["event"] == "close" and r["path"] == "/shared/bob-py.txt" and r.get("bytes_written") == 1000'
    expect_record 'r["user"] == "s3v-bob" and r["event"] == "unlink" and r["process"] == "rm" and r["path"] == "/shared/bob-py.txt"'
    expect_record 'r["user"] == "s3v-alice" and r["event"] == "chmod" and r["detail"] == "mode=0600"'
    expect_record 'r["user"] == "root" and r["uid"] == 0 and r["event"] == "open" and r["process"] == "cat"'
    expect_record 'r["event"] == "mount" and r["result"] == "ok"'
    expect_record 'r["event"] == "key-use"'
}

denied_open() {
    audit_log --denied
    expect_record 'r["user"] == "s3v-bob" and r["event"] == "open" and r["result"] == "EACCES" and r["process"] == "cat" and r["path"] == "/shared/alice.txt" and r["flags"] == "O_RDONLY"'
    # --denied shows nothing else
    python3 -c "import json,sys; sys.exit(any(json.loads(l)['result'] not in ('EACCES','EPERM') for l in open('$WORK/log.json')))"
}

filters() {
    audit_log --path '/shared/bob-*' --event rename
    [[ $(wc -l <"$WORK/log.json") -eq 1 ]]
    audit_log --uid "$(id -u s3v-alice)" --since 1h
    expect_record 'r["user"] == "s3v-alice"'
    python3 -c "import json,sys; sys.exit(any(json.loads(l)['user'] != 's3v-alice' for l in open('$WORK/log.json')))"
    audit_log --until 2000-01-01
    [[ ! -s $WORK/log.json ]]
    # A date alone as the end includes that day.
    audit_log --until "$(date -u +%F)" --event mount
    expect_record 'r["event"] == "mount"'
    # An unknown user: nothing, and a warning saying why.
    audit_log --user s3v-nobody-such 2>"$WORK/unknown-user.err"
    [[ ! -s $WORK/log.json ]]
    grep -q 'warning: no record in the audit trail names user "s3v-nobody-such"' "$WORK/unknown-user.err"
    # `close` is the event of a closed handle (`release` still selects it).
    audit_log --event close --user s3v-alice
    expect_record 'r["event"] == "close"'
    audit_log --event release --user s3v-alice
    expect_record 'r["event"] == "close"'
    sv_audit log --format csv | head -1 | grep -q '^time,host,event,result,uid,user'
    sv_audit log --format table --event unlink | grep -q 'bob-py.txt'
}

report() {
    sv_audit report --since 30d >"$WORK/report.txt"
    cat "$WORK/report.txt"
    grep -E "^$(id -u s3v-bob) +s3v-bob +[0-9]+ +[0-9]+ +1 +1 " "$WORK/report.txt"
    grep -E "^$(id -u s3v-alice) +s3v-alice " "$WORK/report.txt"
}

key_commands_recorded() {
    local opts new=$WORK/key2
    mapfile -t opts < <(s3_opts "$URL")
    sv_keygen "$new" >/dev/null
    timeout 120 "$S3VAULT" key add "$URL" --key-file "$KEY" --new-key-file "$new" "${opts[@]}"
    audit_log --event key-add
    expect_record 'r["event"] == "key-add" and r["uid"] == 0 and r["detail"].startswith("slot=")'
}

status_shows_the_log() {
    timeout 30 "$S3VAULT" status "$MP"
    timeout 30 "$S3VAULT" status "$MP" --json >"$WORK/status.json"
    python3 - "$WORK/status.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
a = s["audit"]
assert a["mode"] == "required" and a["records"] > 10 and a["lost"] == 0, a
assert a["last_upload"].endswith("Z") and not a["last_error"], a
EOF
}

# break_audit_dir / repair_audit_dir: make new local segments impossible
# (a file where the directory was), then undo it. The daemon cannot write
# a record once the segment it has open is closed at the next flush.
break_audit_dir() {
    mv "$CACHE/audit" "$CACHE/audit.away"
    : >"$CACHE/audit"
    sleep $((FLUSH + 2))
}

repair_audit_dir() {
    rm -f "$CACHE/audit"
    mv "$CACHE/audit.away" "$CACHE/audit"
}

# With --audit=required (the default), an open whose record cannot be
# written fails with EIO; it works again once the log can be written.
required_fails_closed() {
    local rc=0
    break_audit_dir
    cat "$MP/shared/alice.txt" >/dev/null 2>"$WORK/cat.err" || rc=$?
    repair_audit_dir
    cat "$WORK/cat.err"
    ((rc != 0)) && grep -q "Input/output error" "$WORK/cat.err"
    cat "$MP/shared/alice.txt" >/dev/null
}

# With --audit=best-effort the open goes through and status counts the loss.
best_effort_counts_losses() {
    sv_umount "$MP"
    mount_volume --audit best-effort
    break_audit_dir
    cat "$MP/shared/alice.txt" >/dev/null
    timeout 30 "$S3VAULT" status "$MP" --json >"$WORK/status.json"
    repair_audit_dir
    python3 -c "
import json, sys
a = json.load(open(sys.argv[1]))['audit']
assert a['mode'] == 'besteffort' and a['lost'] >= 1, a" "$WORK/status.json"
    sv_umount "$MP"
    mount_volume
}

# burst N: as alice, open N new files and print each path once its open
# returned; the daemon is killed while this runs.
burst() {
    as s3v-alice "python3 -c \"
import sys
for i in range($1):
    open('$MP/shared/burst-%d' % i, 'w').close()
    print('/shared/burst-%d' % i, flush=True)
\"" >"$WORK/burst.txt" 2>/dev/null || true
}

kill9_keeps_returned_opens() {
    burst 300 &
    local job=$!
    sleep 0.5
    kill -KILL "$(daemon_pids "$MP")"
    wait "$job" || true
    fusermount3 -uz "$MP" 2>/dev/null || umount -l "$MP" 2>/dev/null || true
    local opened
    opened=$(wc -l <"$WORK/burst.txt")
    echo "$opened opens returned before the kill"
    ((opened > 0))
    mount_volume
    sv_umount "$MP"
    audit_log --event create --user s3v-alice --path '/shared/burst-*'
    python3 - "$WORK/log.json" "$WORK/burst.txt" <<'EOF'
import json, sys
logged = {json.loads(l)["path"] for l in open(sys.argv[1]) if l.strip()}
returned = [l.strip() for l in open(sys.argv[2]) if l.strip()]
missing = [p for p in returned if p not in logged]
print(f"{len(returned)} returned, {len(logged)} logged, {len(missing)} missing")
sys.exit(1 if missing else 0)
EOF
}

verify_ok() {
    sv_audit verify | tee "$WORK/verify.txt"
    grep -qE '^OK: [0-9]+ records in [0-9]+ segments' "$WORK/verify.txt"
}

# tampered WHAT PATTERN: `audit verify` exits 1 and its report matches PATTERN.
tampered() {
    local rc=0
    sv_audit verify >"$WORK/verify.txt" 2>&1 || rc=$?
    cat "$WORK/verify.txt"
    ((rc == 1)) && grep -qE "$1" "$WORK/verify.txt"
}

# segments: the mount's segments (the chain with the most), oldest first;
# CLI commands like `key add` write one-segment chains of their own.
segments() {
    local all writer
    all=$(store_ls "$URL" audit | grep -E '^audit/[0-9a-f]{16}/[0-9]{12}$')
    writer=$(cut -d/ -f2 <<<"$all" | sort | uniq -c | sort -rn | awk 'NR == 1 { print $2 }')
    grep "^audit/$writer/" <<<"$all"
}

flip_byte() {
    local key=$1 f=$WORK/seg
    store_get "$URL" "$key" "$f"
    python3 -c "
import sys; p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[len(b) // 2] ^= 1; open(p, 'wb').write(b)" "$f"
    store_put "$f" "$URL" "$key"
    tampered "$key: edited"
}

delete_segment() {
    store_rm "$URL" "$1"
    tampered "gap: segment [0-9]+ is missing"
}

truncate_segment() {
    local key=$1 f=$WORK/seg
    store_get "$URL" "$key" "$f"
    truncate -s -50 "$f"
    store_put "$f" "$URL" "$key"
    tampered "$key: truncated"
}

# On a bucket with S3 Object Lock (moto implements it), segments are written
# with a retention of --audit-retention-days.
object_lock_retention() {
    local bucket=s3vault-locked-${WORK##*.} url mp=$WORK/mnt-locked key until
    bucket=$(tr '[:upper:]' '[:lower:]' <<<"$bucket")
    url=s3://$bucket/vol
    s3tool mb-locked "$bucket"
    sv_init "$url" --key-file "$KEY" >/dev/null
    sv_mount "$url" "$mp" "$WORK/cache-locked" --key-file "$KEY" --audit-retention-days 30
    echo data >"$mp/f"
    sv_umount "$mp"
    key=$(store_ls "$url" audit | head -1)
    [[ -n $key ]]
    read -r mode until < <(s3tool retention "$url/$key")
    echo "retention of $key: $mode until $until"
    [[ $mode == GOVERNANCE ]]
    python3 -c "
import datetime, sys
until = datetime.datetime.fromisoformat(sys.argv[1])
days = (until - datetime.datetime.now(datetime.timezone.utc)).total_seconds() / 86400
sys.exit(0 if 29.9 < days <= 30 else 1)" "$until"
}

# syslog_copy FLAG PYTHON-CONDITION: mount with FLAG, have alice read a
# file, unmount; some syslog message `m` (a record as JSON) satisfies the
# condition. Listens on /dev/log itself when no syslog daemon does, else
# reads the journal.
syslog_copy() {
    local flag=$1 cond=$2 listener="" out=$WORK/syslog.txt
    : >"$out"
    if [[ ! -e /dev/log ]]; then
        python3 -c "
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('/dev/log')
with open(sys.argv[1], 'a') as out:
    while True:
        out.write(s.recv(65536).decode(errors='replace') + '\n')
        out.flush()" "$out" &
        listener=$!
        for _ in $(seq 50); do [[ -S /dev/log ]] && break; sleep 0.1; done
    fi
    local rc=0
    {
        mount_volume "$flag" &&
            as s3v-alice "cat $MP/shared/alice.txt" >/dev/null &&
            sv_umount "$MP"
    } || rc=$?
    if [[ -n $listener ]]; then
        sleep 0.5
        kill "$listener"
        rm -f /dev/log
    else
        journalctl -t s3vault-audit --since "-2min" -o cat >"$out" 2>/dev/null || true
    fi
    ((rc == 0)) || return "$rc"
    python3 - "$out" "$cond" <<'EOF2'
import json, sys
messages = []
for line in open(sys.argv[1]):
    if "{" in line:
        try:
            messages.append(json.loads(line[line.index("{"):]))
        except ValueError:
            pass
if not any(eval(sys.argv[2], {}, {"m": m}) for m in messages):
    print(f"{len(messages)} records in syslog, none satisfies {sys.argv[2]}")
    sys.exit(1)
EOF2
}

require "set up a volume" setup
require "mount with allow_other" mount_volume
require "users work on the volume" workload
check "records reach the store within the flush interval, while mounted" records_in_store_while_mounted
check "user, uid, pid, program and executable in every user record" pids_recorded
check "each operation is attributed to its user, program, flags and path" attributed
check "a denied open is recorded with EACCES" denied_open
check "filters: --path, --event (close), --uid, --since, --until (a whole day), an unknown --user warned, csv, table" filters
check "audit report summarises per user" report
check "a write by another user to a setuid file clears setuid/setgid, as on local disks" write_clears_setuid
check "a root FIFO of mode 0600: another user cannot open it, and the attempt is in the log" fifo_is_guarded
check "status shows the audit log: records, no loss, last upload" status_shows_the_log
check "--audit=required: an open that cannot be recorded fails with EIO" required_fails_closed
check "--audit=best-effort: the open goes through, status counts the loss" best_effort_counts_losses
check "kill -9 after a burst of opens: every open that returned is logged" kill9_keeps_returned_opens
check "key add is recorded" key_commands_recorded
check "--audit-syslog: a copy of each record in syslog, without its path" \
    syslog_copy --audit-syslog 'm["event"] == "open" and m.get("user") == "s3v-alice" and "path" not in m and m["host"]'
check "--audit-syslog-paths: with its path" \
    syslog_copy --audit-syslog-paths 'm["event"] == "open" and m.get("path") == "/shared/alice.txt"'
check "audit verify: OK on an untouched trail" verify_ok
if [[ $E2E_BACKEND == moto ]]; then
    check "Object Lock bucket: segments are retained for --audit-retention-days" object_lock_retention
fi

store_dump "$URL" "$WORK/pristine"
mapfile -t SEGS < <(segments)
echo "segments: ${#SEGS[@]}"
if ((${#SEGS[@]} < 3)); then
    check "enough segments to tamper with" false
else
    check "a flipped byte in a segment is caught, with the segment" flip_byte "${SEGS[0]}"
    store_restore "$WORK/pristine" "$URL"
    check "a deleted segment in the middle is caught" delete_segment "${SEGS[1]}"
    store_restore "$WORK/pristine" "$URL"
    check "a truncated newest segment is caught" truncate_segment "${SEGS[-1]}"
    store_restore "$WORK/pristine" "$URL"
    check "audit verify: OK again after restoring" verify_ok
fi
e2e_finish

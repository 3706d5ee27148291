#!/usr/bin/env bash
# The Debian package, as an administrator meets it: built by
# scripts/package.sh, installed with dpkg -i on this machine, then used
# without the source tree:
#   /usr/bin/s3vault (stripped) mounts an fstab line of type fuse.s3vault
#     through mount.fuse3, with the default cache directory under the
#     package's /var/cache/s3vault;
#   the man pages and the bash, zsh and fish completions are where man and
#     the shells look;
#   the s3vault@.service template passes systemd-analyze verify, and its
#     commands, expanded as systemd expands them for an example volume file,
#     mount (READY=1 on NOTIFY_SOCKET, as Type=notify needs) and unmount;
#   dpkg -r removes the program and keeps the cache directory.
#
# Needs root and cargo-deb (CARGO_DEB, or DEB: an already built package).
# The package is purged at the end unless it was installed before; the
# files this suite puts in /etc/s3vault and /var/cache/s3vault are removed.
#
# Usage: CARGO_DEB=... bash tests/e2e/package.sh
# Functions here are mostly run indirectly, through `check`.
# shellcheck disable=SC2317
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init package

PKG=s3vault
INSTALLED_BEFORE=0
if dpkg-query -W -f '${Status}' "$PKG" 2>/dev/null | grep -q 'install ok installed'; then
    INSTALLED_BEFORE=1
fi
UNIT_NAME=e2e-${WORK##*.}
UNIT_CONF=/etc/s3vault/$UNIT_NAME.conf
VOLUME_CACHE=""

package_cleanup() {
    local rc=$?
    set +e
    rm -f "$UNIT_CONF"
    if [[ -f $WORK/mounts ]]; then
        while read -r mp; do
            [[ -n $mp ]] || continue
            if mountpoint -q "$mp" 2>/dev/null; then force_unmount "$mp"; fi
            kill_daemons "$mp"
        done < <(sort -u "$WORK/mounts")
    fi
    [[ -z $VOLUME_CACHE ]] || rm -rf --one-file-system "$VOLUME_CACHE"
    if ((!INSTALLED_BEFORE)); then
        dpkg --purge "$PKG" >/dev/null 2>&1
    fi
    (exit "$rc")
    e2e_cleanup
}
trap package_cleanup EXIT

# ---------------------------------------------------------------------------
# Helpers

build_package() {
    SKIP_CARGO=1 bash "$REPO_ROOT/scripts/package.sh" | tee "$WORK/package.out"
    [[ -f $(tail -n 1 "$WORK/package.out") ]]
}

contents_of_deb() { # DEB
    dpkg-deb -I "$1"
    dpkg-deb -c "$1" | awk '{ print $1, $3, $6 }'
    dpkg-deb -f "$1" Depends | grep -qw fuse3
}

install_package() { # DEB
    dpkg -i "$1"
    dpkg-query -W -f '${Status} ${Version}\n' "$PKG" | tee /dev/stderr | grep -q 'install ok installed'
}

# The installed binary answers and carries no line tables (--strip).
binary_installed() {
    /usr/bin/s3vault --version
    if readelf -S /usr/bin/s3vault | grep -q '\.debug_line'; then
        echo "/usr/bin/s3vault still has .debug_line"
        return 1
    fi
    echo "size: $(stat -c %s /usr/bin/s3vault) bytes"
}

dir_mode() { # DIR MODE
    local m
    m=$(stat -c %a "$1")
    echo "$1: mode $m"
    [[ $m == "$2" ]]
}

# Every command has its page, compressed where man looks, and man renders
# the mount page with its examples.
man_pages() {
    local cmd missing=0
    for cmd in "" -mount -umount -status -init -keygen -info -key -audit -snapshot -fsck -gc -restore -recover -completions; do
        if [[ ! -f /usr/share/man/man1/s3vault$cmd.1.gz ]]; then
            echo "missing: /usr/share/man/man1/s3vault$cmd.1.gz"
            missing=1
        fi
    done
    ((!missing))
    MANPAGER=cat MANWIDTH=100 man s3vault-mount >"$WORK/man-mount.txt" 2>&1
    head -n 5 "$WORK/man-mount.txt"
    grep -q 'fuse.s3vault' "$WORK/man-mount.txt"
}

# bash-completion's loader reads /usr/share/bash-completion/completions/NAME;
# sourcing it and asking as bash would must offer the commands and options.
bash_completes() {
    local out
    # shellcheck disable=SC1091
    source /usr/share/bash-completion/completions/s3vault
    COMP_WORDS=(s3vault mo)
    COMP_CWORD=1
    COMP_LINE="s3vault mo"
    COMP_POINT=${#COMP_LINE}
    _s3vault s3vault mo s3vault
    out="${COMPREPLY[*]}"
    echo "s3vault mo<TAB>: $out"
    [[ " $out " == *" mount "* ]]
    COMP_WORDS=(s3vault mount --key-f)
    COMP_CWORD=2
    COMP_LINE="s3vault mount --key-f"
    COMP_POINT=${#COMP_LINE}
    _s3vault s3vault --key-f mount
    out="${COMPREPLY[*]}"
    echo "s3vault mount --key-f<TAB>: $out"
    [[ " $out " == *" --key-file "* ]]
}

zsh_fish_completions() {
    head -n 1 /usr/share/zsh/vendor-completions/_s3vault
    head -n 1 /usr/share/zsh/vendor-completions/_s3vault | grep -qx '#compdef s3vault'
    grep -q "complete -c s3vault .*-a \"mount\"" /usr/share/fish/vendor_completions.d/s3vault.fish
    grep -q "complete -c s3vault .*-l key-file" /usr/share/fish/vendor_completions.d/s3vault.fish
}

# The volume's id, which names its default cache directory.
volume_id() { # URL
    /usr/bin/s3vault info "$1" | awk '$1 == "volume" && $2 == "id" { print $3 }'
}

fstab_mount() { # FSTAB MP
    echo "+ mount -T $1 $2 (fstab line: $(cat "$1"))"
    timeout -k 5 "$MOUNT_TIMEOUT" mount -T "$1" "$2"
    mountpoint -q "$2"
}

# The daemon serving MP runs the packaged binary (so mount.fuse3 found
# /usr/bin/s3vault, not a development build).
served_by_package() { # MP
    local pids pid
    pids=$(daemon_pids "$1")
    echo "daemons: ${pids:-none}"
    [[ -n $pids ]]
    for pid in $pids; do
        echo "$pid: $(readlink "/proc/$pid/exe")"
        [[ $(readlink "/proc/$pid/exe") == /usr/bin/s3vault ]]
    done
}

write_read_back() { # MP
    head -c 3000000 /dev/urandom >"$WORK/data"
    cp "$WORK/data" "$1/data"
    echo "written through the packaged mount" >"$1/small"
    cmp "$WORK/data" "$1/data"
    [[ $(cat "$1/small") == "written through the packaged mount" ]]
}

data_there() { # MP
    cmp "$WORK/data" "$1/data"
    [[ $(cat "$1/small") == "written through the packaged mount" ]]
}

plain_umount() { # MP
    local pids
    pids=$(daemon_pids "$1")
    timeout -k 5 "$UMOUNT_TIMEOUT" umount "$1"
    if mountpoint -q "$1"; then
        echo "umount exited 0 but $1 is still mounted"
        return 1
    fi
    for _ in $(seq 600); do
        [[ -n $(daemon_pids "$1") ]] || return 0
        sleep 0.2
    done
    echo "the daemon ($pids) did not exit within 120 s of umount"
    return 1
}

unit_verifies() { # UNIT
    timeout 60 systemd-analyze verify "$1"
}

# unit_commands KEY: the unit's KEY= lines (ExecStart, ...) for instance
# UNIT_NAME as systemd expands them with UNIT_CONF's variables: %i is the
# instance, "${VAR}" one word, "$VAR" split at whitespace. One command per
# line, as a JSON list of its words.
unit_commands() { # KEY
    python3 - "$1" "$UNIT_NAME" "$UNIT_CONF" /lib/systemd/system/s3vault@.service <<'PY'
import json, re, sys
key, instance, conf, unit = sys.argv[1:]
env = {}
for line in open(conf):
    line = line.strip()
    if line and not line.startswith("#"):
        k, _, v = line.partition("=")
        env[k.strip()] = v.strip()
for line in open(unit):
    if not line.startswith(key + "="):
        continue
    words = []
    for w in line.split("=", 1)[1].split():
        w = w.replace("%i", instance)
        m = re.fullmatch(r"\$\{(\w+)\}", w)
        if m:
            words.append(env.get(m.group(1), ""))
            continue
        m = re.fullmatch(r"\$(\w+)", w)
        if m:
            words.extend(env.get(m.group(1), "").split())
            continue
        words.append(w)
    print(json.dumps(words))
PY
}

run_unit_command() { # JSON
    local -a argv
    mapfile -t argv < <(python3 -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])))' "$1")
    echo "+ ${argv[*]}"
    timeout -k 5 "$MOUNT_TIMEOUT" "${argv[@]}"
}

# The service's life under systemd: ExecStartPre, then ExecStart with
# NOTIFY_SOCKET set; READY=1 must come from ExecStart's own process (systemd's
# default NotifyAccess=main ignores any other sender) once MP serves, and
# that process must stay; then ExecStop, after which it ends with status 0.
service_lifecycle() { # MP
    local mp=$1 sock=$WORK/notify.sock listener main rc=0 sender
    local -a start
    while read -r cmd; do run_unit_command "$cmd"; done < <(unit_commands ExecStartPre)
    [[ -d $mp ]]
    python3 - "$sock" >"$WORK/notify.out" <<'PY' &
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.settimeout(120)
ucred = struct.calcsize("3i")
while True:
    msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(ucred))
    pid = next(struct.unpack("3i", data[:ucred])[0] for level, kind, data in anc
               if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
    print(pid, msg.decode().replace("\n", " "), flush=True)
    if "READY=1" in msg.decode().split("\n"):
        break
PY
    listener=$!
    echo "$listener" >>"$WORK/pids"
    for _ in $(seq 50); do [[ -S $sock ]] && break; sleep 0.1; done
    mapfile -t start < <(python3 -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])))' "$(unit_commands ExecStart)")
    echo "+ NOTIFY_SOCKET=$sock ${start[*]}"
    NOTIFY_SOCKET=$sock "${start[@]}" >"$WORK/service.log" 2>&1 &
    main=$!
    echo "$main" >>"$WORK/pids"
    wait "$listener" || rc=$?
    echo "notifications (sender pid, message):"
    cat "$WORK/notify.out"
    if ((rc != 0)); then
        echo "no READY=1 within 120 s"
        tail -n 20 "$WORK/service.log"
        return 1
    fi
    sender=$(tail -n 1 "$WORK/notify.out" | cut -d' ' -f1)
    if [[ $sender != "$main" ]]; then
        echo "READY=1 came from pid $sender, not from ExecStart's process $main"
        return 1
    fi
    if ! kill -0 "$main" 2>/dev/null; then
        echo "ExecStart's process $main ended after READY=1"
        return 1
    fi
    mountpoint -q "$mp"
    data_there "$mp"
    while read -r cmd; do run_unit_command "$cmd"; done < <(unit_commands ExecStop)
    if mountpoint -q "$mp"; then
        echo "ExecStop exited 0 but $mp is still mounted"
        return 1
    fi
    rc=0
    wait "$main" || rc=$?
    echo "ExecStart's process ended with status $rc"
    ((rc == 0))
}

package_removed_cache_kept() {
    dpkg -r "$PKG"
    [[ ! -e /usr/bin/s3vault ]]
    [[ ! -e /lib/systemd/system/s3vault@.service ]]
    [[ -d $VOLUME_CACHE ]]
    ls -la "$VOLUME_CACHE"
}

# ---------------------------------------------------------------------------
# Build and install

if [[ -n ${DEB:-} ]]; then
    check "the package given in DEB exists" test -f "$DEB"
else
    require "scripts/package.sh builds the package" build_package
    DEB=$(tail -n 1 "$WORK/package.out")
fi
check "the package depends on fuse3 and holds the binary, pages, completions and unit" contents_of_deb "$DEB"
if [[ -e /usr/local/sbin/s3vault || -e /usr/local/bin/s3vault ]]; then
    abort "an s3vault in /usr/local would shadow the packaged one for mount.fuse3"
fi
require "dpkg -i installs it" install_package "$DEB"

S3VAULT=/usr/bin/s3vault
export S3VAULT
check "/usr/bin/s3vault runs and is stripped" binary_installed
check "postinst made /var/cache/s3vault private (0700)" dir_mode /var/cache/s3vault 700
check "postinst made /etc/s3vault (0755)" dir_mode /etc/s3vault 755
check "man finds a page for every command" man_pages
check "bash completes commands and options" bash_completes
check "zsh and fish completions are installed" zsh_fish_completions

# ---------------------------------------------------------------------------
# fstab

KEY=$WORK/key
URL=$(vol_url packaged)
MNT=$WORK/mnt
require "keygen and init with the packaged binary" \
    bash -c "'$S3VAULT' keygen '$KEY' && '$S3VAULT' init '$URL' --key-file '$KEY'"
VOLUME_ID=$(volume_id "$URL")
VOLUME_CACHE=/var/cache/s3vault/$VOLUME_ID
echo "volume id: $VOLUME_ID"

FSTAB=$WORK/fstab
echo "$URL $MNT fuse.s3vault key_file=$KEY,_netdev,nofail 0 0" >"$FSTAB"
mkdir -p "$MNT"
echo "$MNT" >>"$WORK/mounts"
require "mount -T fstab (type fuse.s3vault) with nothing but the package installed" fstab_mount "$FSTAB" "$MNT"
check "the daemon is the packaged /usr/bin/s3vault" served_by_package "$MNT"
check "its cache is the default, under the package's /var/cache/s3vault" test -d "$VOLUME_CACHE"
check "write and read back through it" write_read_back "$MNT"
check "umount(8) unmounts it and the daemon exits" plain_umount "$MNT"
if mountpoint -q "$MNT"; then
    abort "$MNT is still mounted after umount(8)"
fi

# ---------------------------------------------------------------------------
# systemd

UNIT_MNT=$WORK/unit-mnt
cat >"$UNIT_CONF" <<EOF
# written by the package suite
URL=$URL
MOUNTPOINT=$UNIT_MNT
OPTIONS=--key-file $KEY
EOF
echo "$UNIT_MNT" >>"$WORK/mounts"
check "systemd-analyze verify s3vault@$UNIT_NAME.service" unit_verifies "s3vault@$UNIT_NAME.service"
check "the unit's commands mount (READY=1) and unmount the example volume" service_lifecycle "$UNIT_MNT"

# ---------------------------------------------------------------------------
# Removal

if ((!INSTALLED_BEFORE)); then
    check "dpkg -r removes the program and leaves the cache directory" package_removed_cache_kept
fi

e2e_finish

#!/usr/bin/env bash
# The access review on a real mount. Three non-root users and root work on
# a volume of patient folders with ordinary programs: alice and bob read a
# few charts, root reads one, mallory reads every chart (a bulk export), bob
# is refused a chart six times in a row; the volume is mounted once with
# --audit=off, once with the daemon's clock twelve hours back, a key slot is
# added, and a segment of another chain is tampered with. Then
# `s3vault audit review` must report each of these as its finding (and no
# finding for the ordinary reads), in JSON and in HTML; the HTML is opened
# in headless Chromium: no console message, the charts are drawn, every
# finding is listed, and a screenshot is kept. `audit alerts` exits 0 on a
# quiet period and 1, with JSON lines, on a busy one.
#
# The clock override is for this test only: the off-hours mount runs under
# libfaketime (Debian's `faketime`, FAKETIME=-12h in the daemon's
# environment), so its records carry a time twelve hours back. s3vault has
# no clock setting of its own. The working hours of the test's thresholds
# file are the five hours around the time the suite runs, every day.
#
# Artifacts (kept after the run): the report, its JSON and the screenshot in
# $E2E_ARTIFACTS (default target/e2e-artifacts/review).
#
# Usage: [E2E_URL=...] bash tests/e2e/review.sh
# shellcheck disable=SC2317 # functions run through `check`
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
e2e_init review

KEY=$WORK/key
URL=$(vol_url review)
MP=$WORK/mnt
CACHE=$WORK/cache
USERS=(s3v-alice s3v-bob s3v-mallory)
CHARTS=120
ARTIFACTS=${E2E_ARTIFACTS:-$REPO_ROOT/target/e2e-artifacts/review}
THRESHOLDS=$WORK/thresholds.toml
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
FAKETIME_LIB=$(find /usr/lib -name libfaketime.so.1 2>/dev/null | head -1)

chmod 755 "$WORK"
for u in "${USERS[@]}"; do
    id "$u" >/dev/null 2>&1 || useradd --no-create-home --shell /bin/sh "$u"
done

as() { # USER CMD: a shell command line as USER
    local user=$1
    shift
    su -s /bin/sh "$user" -c "$*"
}

sv_audit() { # ACTION ARGS...: an audit subcommand on the volume
    local action=$1 opts
    shift
    mapfile -t opts < <(s3_opts "$URL")
    timeout 300 "$S3VAULT" audit "$action" "$URL" --key-file "$KEY" "${opts[@]}" "$@"
}

# Working hours: two hours before now to three after, every day, in UTC;
# twelve hours back is outside them.
hour=$((10#$(date -u +%H)))
printf 'timezone = "UTC"\nworking_hours = "%02d:00-%02d:00"\nworking_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]\nbulk_min_files = 50\n' \
    $(((hour + 22) % 24)) $(((hour + 3) % 24)) >"$THRESHOLDS"

setup() {
    sv_keygen "$KEY" >/dev/null
    sv_init "$URL" --key-file "$KEY" >/dev/null
    sv_mount "$URL" "$MP" "$CACHE" --key-file "$KEY" --audit-flush-interval 2 --allow-other
    mkdir -m 755 "$MP/patients"
    for i in $(seq -w 1 "$CHARTS"); do
        mkdir -m 755 "$MP/patients/p$i"
        echo "chart of patient $i" >"$MP/patients/p$i/chart.txt"
        chmod 644 "$MP/patients/p$i/chart.txt"
    done
    mkdir -m 755 "$MP/patients/vip"
    echo "restricted" >"$MP/patients/vip/chart.txt"
    chmod 600 "$MP/patients/vip/chart.txt"
}

ordinary_work() {
    as s3v-alice "cat $MP/patients/p001/chart.txt $MP/patients/p002/chart.txt $MP/patients/p003/chart.txt" >/dev/null
    as s3v-bob "cat $MP/patients/p004/chart.txt $MP/patients/p005/chart.txt" >/dev/null
    cat "$MP/patients/p006/chart.txt" >/dev/null
}

bulk_export() {
    as s3v-mallory "cat $MP/patients/p*/chart.txt" >"$WORK/export.txt"
    [[ $(wc -l <"$WORK/export.txt") == "$CHARTS" ]]
}

refused_six_times() {
    for _ in 1 2 3 4 5 6; do
        if as s3v-bob "cat $MP/patients/vip/chart.txt" 2>/dev/null; then
            echo "bob read a 0600 file of root's"
            return 1
        fi
    done
}

mount_with_audit_off() {
    sv_mount "$URL" "$MP" "$CACHE" --key-file "$KEY" --audit off --allow-other
    as s3v-alice "cat $MP/patients/p007/chart.txt" >/dev/null
    sv_umount "$MP"
}

mount_off_hours() {
    [[ -n $FAKETIME_LIB ]] || { echo "libfaketime not installed"; return 1; }
    LD_PRELOAD=$FAKETIME_LIB FAKETIME=-12h sv_mount "$URL" "$MP" "$CACHE" --key-file "$KEY" --allow-other
    as s3v-alice "cat $MP/patients/p008/chart.txt" >/dev/null
    sv_umount "$MP"
}

add_key_slot() {
    local opts
    mapfile -t opts < <(s3_opts "$URL")
    sv_keygen "$WORK/key2" >/dev/null
    timeout 120 "$S3VAULT" key add "$URL" --key-file "$KEY" --new-key-file "$WORK/key2" "${opts[@]}"
}

quiet_period_no_alert() {
    sleep 2
    sv_audit alerts --since 1s --thresholds "$THRESHOLDS" | tee "$WORK/quiet.jsonl"
    [[ ! -s $WORK/quiet.jsonl ]]
}

alerts_need_since() {
    expect_fail "needs --since" sv_audit alerts
}

# A chain of its own (another cache directory), then a flipped byte in it.
tamper_another_chain() {
    local before after key f=$WORK/seg
    before=$(store_ls "$URL" audit | cut -d/ -f2 | sort -u)
    sv_mount "$URL" "$MP" "$WORK/cache-2" --key-file "$KEY" --allow-other
    as s3v-bob "cat $MP/patients/p009/chart.txt" >/dev/null
    sv_umount "$MP"
    after=$(store_ls "$URL" audit | cut -d/ -f2 | sort -u)
    key=$(comm -13 <(echo "$before") <(echo "$after") | head -1)
    [[ -n $key ]] || { echo "no new chain"; return 1; }
    key=$(store_ls "$URL" "audit/$key" | head -1)
    store_get "$URL" "$key" "$f"
    python3 -c "
import sys; p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[len(b) // 2] ^= 1; open(p, 'wb').write(b)" "$f"
    store_put "$f" "$URL" "$key"
    echo "tampered with $key"
}

review() {
    mkdir -p "$ARTIFACTS"
    sv_audit review --since 13h --tz UTC --thresholds "$THRESHOLDS" \
        --html "$ARTIFACTS/review.html" --json "$ARTIFACTS/review.json" | tee "$WORK/review.txt"
    grep -q "DAMAGED" "$WORK/review.txt"
    [[ -s $ARTIFACTS/review.html && -s $ARTIFACTS/review.json ]]
}

# The findings, exactly: each expected one for its user, none for the rest.
findings_as_expected() {
    python3 - "$ARTIFACTS/review.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
f = r["findings"]
def users(kind):
    return sorted({x.get("user") or f"uid {x.get('uid')}" for x in f if x["kind"] == kind})
print("findings:", [(x["kind"], x.get("user"), x["count"]) for x in f])
assert not r["integrity"]["intact"], r["integrity"]
assert users("bulk-read") == ["s3v-mallory"], users("bulk-read")
bulk = next(x for x in f if x["kind"] == "bulk-read")
assert bulk["count"] >= 120 and bulk["severity"] == "high", bulk
assert users("denied-burst") == ["s3v-bob"], users("denied-burst")
assert next(x for x in f if x["kind"] == "denied-burst")["count"] >= 5
assert users("off-hours") == ["s3v-alice"], users("off-hours")
off = next(x for x in f if x["kind"] == "off-hours")
assert off["records"][0]["path"] == "/patients/p008/chart.txt", off
assert len([x for x in f if x["kind"] == "audit-off-mount"]) == 1
assert len([x for x in f if x["kind"] == "key-slot-change"]) == 1
assert users("root-read") == ["root"], users("root-read")
damaged = [x for x in f if x["kind"] == "audit-damaged"]
assert damaged and all("edited" in x["summary"] for x in damaged), damaged
# No other kind of finding (history is too short for first-access).
kinds = {x["kind"] for x in f} - {"audit-chain-open"}
assert kinds == {"bulk-read", "denied-burst", "off-hours", "audit-off-mount", "key-slot-change", "root-read",
                 "audit-damaged"}, kinds
# Per user and per folder.
u = {x["user"]: x for x in r["users"]}
assert u["s3v-mallory"]["distinct_files"] == 120 and u["s3v-bob"]["denied"] >= 6, u
assert u["s3v-alice"]["opens"] == 4, u["s3v-alice"]
assert any(x["folder"] == "/patients/p001" and x["user"] == "s3v-alice" and x["programs"] == ["/usr/bin/cat"]
           for x in r["folders"]), r["folders"][:5]
assert len(r["digest"]) == 64
EOF
}

path_filter_limits_the_report() {
    sv_audit review --since 13h --tz UTC --path '/patients/p00[1-3]/*' --json "$WORK/narrow.json" >/dev/null
    python3 - "$WORK/narrow.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
text = json.dumps(r)
assert "p004" not in text and "vip" not in text, "a path outside the filter is shown"
assert {x["folder"] for x in r["folders"]} == {"/patients/p001", "/patients/p002", "/patients/p003"}, r["folders"]
EOF
}

# The page in a real browser: loads without a console message, the charts
# are drawn, each finding is a row, and a screenshot is kept.
html_in_chromium() {
    [[ -n $CHROMIUM ]] || { echo "chromium is not installed"; return 1; }
    # shellcheck disable=SC2054 # the comma is Chromium's, not an array's
    local flags=(--headless --no-sandbox --disable-gpu --no-first-run --disable-extensions
        --user-data-dir="$WORK/chromium" --window-size=1280,2400)
    timeout 120 "$CHROMIUM" "${flags[@]}" --enable-logging=stderr --v=0 \
        --dump-dom "file://$ARTIFACTS/review.html" >"$WORK/dom.html" 2>"$WORK/chromium.log"
    timeout 120 "$CHROMIUM" "${flags[@]}" --screenshot="$ARTIFACTS/review.png" \
        "file://$ARTIFACTS/review.html" 2>>"$WORK/chromium.log"
    if grep -E 'CONSOLE|Uncaught|Failed to load' "$WORK/chromium.log"; then
        echo "console messages above"
        return 1
    fi
    [[ -s $ARTIFACTS/review.png ]] || { echo "no screenshot"; tail "$WORK/chromium.log"; return 1; }
    python3 - "$WORK/dom.html" "$ARTIFACTS/review.json" <<'EOF'
import html.parser, json, sys
class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.svg = None
        self.rects = {}
        self.rows = []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg":
            self.svg = a.get("id")
            self.rects[self.svg] = 0
        elif tag == "rect" and self.svg and float(a.get("height", 0)) > 0:
            self.rects[self.svg] += 1
        elif tag == "tr" and "finding" in (a.get("class") or ""):
            self.rows.append(a.get("data-kind"))
    def handle_endtag(self, tag):
        if tag == "svg":
            self.svg = None
page = Page()
page.feed(open(sys.argv[1]).read())
print("bars:", page.rects, "finding rows:", len(page.rows))
assert page.rects.get("chart-days", 0) > 0 and page.rects.get("chart-hours", 0) > 0, page.rects
expected = [f["kind"] for f in json.load(open(sys.argv[2]))["findings"]]
assert page.rows == expected, (page.rows, expected)
EOF
    echo "screenshot: $ARTIFACTS/review.png"
}

alerts_on_the_busy_period() {
    local rc=0
    sv_audit alerts --since 13h --thresholds "$THRESHOLDS" >"$WORK/alerts.jsonl" || rc=$?
    cat "$WORK/alerts.jsonl"
    ((rc == 1))
    python3 - "$WORK/alerts.jsonl" <<'EOF'
import json, sys
kinds = [json.loads(line)["kind"] for line in open(sys.argv[1])]
assert "bulk-read" in kinds and "audit-damaged" in kinds, kinds
assert "audit-chain-open" not in kinds, kinds
EOF
}

require "volume with $CHARTS patient folders, mounted" setup
check "alice, bob and root read a few charts" ordinary_work
check "mallory reads every chart" bulk_export
check "bob is refused a 0600 chart six times" refused_six_times
umount_step "unmount" "$MP"
check "a mount with --audit=off" mount_with_audit_off
check "a mount whose clock is twelve hours back (libfaketime)" mount_off_hours
check "a key slot is added" add_key_slot
check "audit alerts: a quiet period exits 0 with no line" quiet_period_no_alert
check "audit alerts without --since is refused" alerts_need_since
check "a segment of another chain is tampered with" tamper_another_chain
require "audit review writes the HTML and JSON report" review
check "the findings are exactly the expected ones, with their users" findings_as_expected
check "--path limits the report to its paths" path_filter_limits_the_report
check "the HTML in headless Chromium: no console message, charts drawn, every finding listed" html_in_chromium
check "audit alerts: exit 1 and one JSON line per finding" alerts_on_the_busy_period
e2e_finish

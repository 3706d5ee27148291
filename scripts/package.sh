#!/usr/bin/env bash
# Builds the Debian package, target/debian/s3vault_VERSION-1_ARCH.deb, and
# prints its path on the last line:
#   /usr/bin/s3vault (stripped), found by mount.fuse3, so fstab lines of
#     type fuse.s3vault work once it is installed;
#   the man pages and the bash, zsh and fish completions, generated from
#     the binary first;
#   the s3vault@.service template and an example volume file;
#   /etc/s3vault and /var/cache/s3vault (0700), made by postinst.
#
# Install with `dpkg -i target/debian/s3vault_*.deb` (it depends on fuse3).
#
# Environment:
#   CARGO_DEB     the cargo-deb binary (default: `cargo-deb` on PATH;
#                 `cargo install cargo-deb` installs it)
#   SKIP_CARGO=1  package the existing target/release/s3vault
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
CARGO_DEB=${CARGO_DEB:-cargo-deb}
BIN=target/release/s3vault
ASSETS=target/deb-assets

if ! command -v "$CARGO_DEB" >/dev/null; then
    echo "package.sh: $CARGO_DEB not found; install it with \`cargo install cargo-deb\` or set CARGO_DEB" >&2
    exit 2
fi
if [[ ${SKIP_CARGO:-} != 1 ]]; then
    flock /tmp/s3vault-cargo.lock cargo build --release --locked
fi

rm -rf "$ASSETS"
mkdir -p "$ASSETS/completions"
"$BIN" manpages "$ASSETS/man" >/dev/null
"$BIN" completions bash >"$ASSETS/completions/s3vault"
"$BIN" completions zsh >"$ASSETS/completions/_s3vault"
"$BIN" completions fish >"$ASSETS/completions/s3vault.fish"

# --strip: the release profile keeps line tables (180 MB); the package
# carries the 26 MB binary without them.
"$CARGO_DEB" --no-build --strip --quiet

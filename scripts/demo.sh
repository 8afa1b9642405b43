#!/usr/bin/env bash
# Viaduct's main job, end to end on this machine: installs what it needs,
# builds everything, provisions the guest kit, boots the test hosts, and
# then runs the whole stack: viaduct booting a guest whose disk and NIC are
# served by vhost-user-blk and vhost-user-net (inside test host B, since
# host KVM here cannot boot Linux), printing what the guest saw. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
command -v cargo >/dev/null || { echo "demo.sh: cargo not found; install Rust (rustup) first" >&2; exit 1; }

$SUDO bash scripts/install-host-deps.sh
echo "==> building (release)"
cargo build --workspace --release
echo "==> booting the test hosts"
./target/release/viaduct-kit selftest all
echo "==> viaduct with both daemons"
exec ./target/release/viaduct-kit demo

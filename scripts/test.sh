#!/usr/bin/env bash
# Runs every test Viaduct has: formatting, clippy, unit tests, in-process
# vhost-user tests, and the end-to-end suites that boot real Linux guests
# (test host A: QEMU TCG guest; test host B: nested KVM host).
# Installs what it needs first (Debian packages, the guest kit). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo

command -v cargo >/dev/null || { echo "test.sh: cargo not found; install Rust (rustup) first" >&2; exit 1; }

step "host packages"
$SUDO bash scripts/install-host-deps.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings

step "build (release)"
cargo build --workspace --release

step "guest kit"
cargo run -q --release -p viaduct-tests --bin viaduct-kit -- provision

step "tests"
start=$(date +%s)
cargo test --workspace --release -- --test-threads=2
echo "all tests passed in $(( $(date +%s) - start ))s"

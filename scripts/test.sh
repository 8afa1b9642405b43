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

step "fuzz (short runs; longer campaigns: docs/hardening.md)"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
start=$(date +%s)
(
  cd fuzz
  cargo +nightly fuzz build
  # The message targets serve in-process daemons whose threads outlive each
  # input: LeakSanitizer cannot judge them, the targets count fds/threads.
  for t in blk_request net_tx vhost_user_blk_msgs vhost_user_net_msgs virtio_pci vfio_config; do
    leaks=1; case $t in *_msgs) leaks=0 ;; esac
    mkdir -p "corpus/$t"
    ASAN_OPTIONS=detect_leaks=$leaks cargo +nightly fuzz run "$t" "corpus/$t" -- \
      -max_total_time=25 -timeout=10 -rss_limit_mb=4096 -len_control=0 -detect_leaks=$leaks
  done
)
echo "fuzzing done in $(( $(date +%s) - start ))s"

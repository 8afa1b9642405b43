#!/usr/bin/env bash
# Installs the Debian packages Viaduct's tests and demo need, idempotently.
# QEMU 10 comes from bookworm-backports; the suite is enabled from the
# machine's existing Debian apt source (same URIs and keyring), never by
# writing a host name.
set -euo pipefail

log() { printf 'install-host-deps: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (apt-get install)"; exit 1
fi

BPO=/etc/apt/sources.list.d/viaduct-backports.sources
if [ ! -f "$BPO" ]; then
  src=/etc/apt/sources.list.d/debian.sources
  if [ ! -f "$src" ]; then
    log "no $src: cannot derive the Debian mirror for bookworm-backports"; exit 1
  fi
  # Take the stanza whose Suites line names plain 'bookworm'.
  awk -v RS= '/Suites:[^\n]*(^|[ \t])bookworm([ \t]|$)/ || /Suites: bookworm( |$)/ {print; exit}' "$src" \
    | sed -E 's/^Suites:.*/Suites: bookworm-backports/' > "$BPO.tmp"
  if ! grep -q '^URIs:' "$BPO.tmp"; then
    rm -f "$BPO.tmp"; log "could not find the bookworm stanza in $src"; exit 1
  fi
  mv "$BPO.tmp" "$BPO"
  log "enabled bookworm-backports in $BPO"
  rm -f /var/lib/viaduct-apt-updated
fi

need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
# Ceph 16 (bookworm): the one-node cluster of the RBD tests (test-kit's
# `ceph`), and librbd1, which vhost-user-blk loads at run time for rbd: disks.
for p in cpio busybox-static qemu-utils xz-utils zstd iproute2 ethtool fio dpdk-dev \
  ceph-mon ceph-osd ceph-mgr ceph-common librbd1; do
  have "$p" || need+=("$p")
done
qemu_ok=0
if have qemu-system-x86; then
  v=$(dpkg-query -W -f='${Version}' qemu-system-x86)
  case "$v" in 1:1[0-9].*) qemu_ok=1 ;; esac
fi

if [ ${#need[@]} -gt 0 ] || [ $qemu_ok -eq 0 ]; then
  if [ ! -f /var/lib/viaduct-apt-updated ] || [ -n "$(find /var/lib/viaduct-apt-updated -mmin +720 2>/dev/null)" ]; then
    log "apt-get update"
    apt-get update -q >/dev/null
    touch /var/lib/viaduct-apt-updated
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  fi
  if [ $qemu_ok -eq 0 ]; then
    log "installing qemu-system-x86 from bookworm-backports"
    apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null \
      || { log "qemu-system-x86 10 could not be installed from bookworm-backports"; exit 1; }
  fi
fi
log "host packages ready ($(qemu-system-x86_64 --version | head -1))"

# Test host B (L1): a 64 MiB raw image with a host pattern at 4 MiB, served
# over vhost-user-blk by serve() on $SOCK.
# Shell variables and functions it uses come from the prelude tests/src/l2.rs
# writes before it (crate::shell::Prelude); lib.sh gives result().
truncate -s 64M ${IMAGE}
yes VIADUCT-HOST-PATTERN | head -c 1048576 > /tmp/hp
dd if=/tmp/hp of=${IMAGE} bs=1M seek=4 conv=notrunc 2>/dev/null
result host_md5=$(md5sum < /tmp/hp | cut -d' ' -f1)
# Daemon output goes to a file, not L1's console tty, and is shown after.
serve </dev/null >/tmp/${TAG}-daemon.log 2>&1 &
D=$!
for i in $(seq 100); do [ -S ${SOCK} ] && break; sleep 0.1; done
[ -S ${SOCK} ] && result ${TAG}_listening=1 || result ${TAG}_listening=0

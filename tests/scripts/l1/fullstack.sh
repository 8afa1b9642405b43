# The full-stack run in test host B (L1): our daemons, viaduct with its API,
# and L1's answers to each L2 phase (see api_choreography in l2.rs).
# Shell variables and functions it uses come from the prelude tests/src/l2.rs
# writes before it (crate::shell::Prelude); lib.sh gives result().
# The net daemon (two queue pairs) on a TAP in L1.
net_daemon </dev/null >/tmp/net-daemon.log 2>&1 &
N=$!
for i in $(seq 100); do [ -S /tmp/net.sock ] && break; sleep 0.1; done
wait_l2() { for i in $(seq 600); do grep -q "$1" /tmp/l2.out 2>/dev/null && return 0; sleep 0.5; done; result ${TAG}_timeout="$1"; return 1; }
ctl() { ${L1_BIN_DIR}/viaduct ctl --api-socket /tmp/vm.api "$@"; }
# Waits (up to ~2 s) until daemon $1's in-flight region shows a request
# taken and not returned: a 16-byte descriptor state whose first byte, the
# in-flight flag, is 1 (queue headers start with the zero features word).
aim() {
  f=""; for x in /proc/$1/fd/*; do case "$(readlink $x)" in *viaduct-inflight*) f=$x;; esac; done
  [ -n "$f" ] || return 1
  for i in $(seq 300); do
    hexdump -v -e '16/1 "%02x " "\n"' $f 2>/dev/null | grep -q '^01 ' && return 0
  done
  return 1
}
total_exits() { ctl info | grep -o '"total":[0-9]*' | cut -d: -f2; }
# busybox nc quits when its stdin ends: hold it open with a FIFO.
# Guest RAM in hugepages: reserve exactly what it needs.
echo ${HUGEPAGES} > /proc/sys/vm/nr_hugepages
result ${TAG}_hugepages_reserved=$(cat /proc/sys/vm/nr_hugepages)
mkfifo /tmp/hold; sleep 600 > /tmp/hold & HOLD=$!
nc -l -p 5000 < /tmp/hold > /tmp/tcp.rx &
NC=$!
rm -f /tmp/l2in; mkfifo /tmp/l2in
( RUST_LOG=info ${L1_BIN_DIR}/viaduct --kernel ${L1_GUEST_DIR}/bz --initramfs ${L1_GUEST_DIR}/l2.cpio \
  --cmdline "console=ttyS0 reboot=k panic=-1 quiet L2TAG=${TAG} L2API=1" --cpus 2 --memory ${MEM_MIB}M,hugepages=on \
  --disk socket=${SOCK},num_queues=2 --net socket=/tmp/net.sock,mac=${L2_MAC},num_queue_pairs=2 \
  --api-socket /tmp/vm.api < /tmp/l2in; echo $? > /tmp/vexit ) | tee /tmp/l2.out &
V=$!
exec 3> /tmp/l2in
if wait_l2 ${TAG}_phase=load; then
  for i in $(seq 20); do kill -0 $NC 2>/dev/null || break; sleep 0.5; done
  kill $NC 2>/dev/null
  result ${TAG}_tcp_rx_md5=$(md5sum < /tmp/tcp.rx | cut -d' ' -f1) ${TAG}_tcp_rx_bytes=$(wc -c < /tmp/tcp.rx)
  result ${TAG}_info_idle=$(ctl info)
  # Hugepages in use: only viaduct's guest RAM uses them in L1.
  result ${TAG}_hugepages_used=$(awk '/HugePages_Total/{t=$2} /HugePages_Free/{f=$2} /HugePages_Rsvd/{r=$2} END {print t-f+r}' /proc/meminfo)
  # The net daemon's per-queue counters (SIGUSR1 logs them).
  kill -USR1 $N; sleep 0.5
  for p in 0 1; do for d in rx tx; do
    result ${TAG}_pair${p}_$d=$(grep "counters pair=$p dir=$d " /tmp/net-daemon.log | tail -n 1 | sed 's/.*packets=\([0-9]*\).*/\1/')
  done; done
  kills=0; aimed=0
  for k in $(seq ${BLK_KILLS}); do
    usleep $(( (${RANDOM:-500} % 800 + 200) * 1000 ))
    grep -q "${TAG}_phase=loaded" /tmp/l2.out && break
    aim $D && aimed=$((aimed + 1))
    kill -9 $D; wait $D 2>/dev/null
    usleep $(( ${RANDOM:-100} % 300 * 1000 ))
    serve </dev/null >/tmp/${TAG}-daemon-k$k.log 2>&1 &
    D=$!
    for i in $(seq 150); do ctl info | grep -Eq "\"reconnects\":$k[,}]" && break; sleep 0.1; done
    kills=$k
  done
  result ${TAG}_rl_kills=$kills ${TAG}_rl_aimed=$aimed
  result ${TAG}_info_reconnected=$(ctl info)
  result ${TAG}_rl_resubmitted=$(cat /tmp/${TAG}-daemon-k*.log | grep -o 'resubmit=[0-9]*' | cut -d= -f2 | awk '{s+=$1} END {print s+0}')
  # Kills done: the stop mark ends L2's writers (crate::restart_load).
  printf LOOP-STOP! | dd of=${IMAGE} bs=10 count=1 conv=notrunc 2>/dev/null
  wait_l2 ${TAG}_phase=loaded
  ok=1; checked=0; w=0
  while [ $w -lt ${WORKERS} ]; do
    n=$(sed -n "s/.*${TAG}_rl_iterations_$w=\([0-9]*\).*/\1/p" /tmp/l2.out | tail -n 1)
    k=0
    while [ $k -lt ${PER_WORKER} ] && [ $k -lt ${n:-0} ]; do
      last=$(( k + (n - 1 - k) / ${PER_WORKER} * ${PER_WORKER} ))
      b=$(( 1 + w * ${PER_WORKER} + k ))
      want=$(yes "viaduct-$w-$last" | head -c ${BLOCK} | md5sum | cut -d' ' -f1)
      got=$(dd if=${IMAGE} bs=${BLOCK} skip=$b count=1 2>/dev/null | md5sum | cut -d' ' -f1)
      if [ "$want" = "$got" ]; then checked=$((checked + 1)); else ok=0; result ${TAG}_rl_bad_block=$b; fi
      k=$((k + 1))
    done
    w=$((w + 1))
  done
  result ${TAG}_rl_image=$ok ${TAG}_rl_blocks_checked=$checked
  nc -l -p 5001 < /tmp/hold > /tmp/tcp2.rx &
  NC=$!
  echo go >&3
fi
if wait_l2 ${TAG}_phase=net; then
  # The guest's TCP transfer is under way: kill the net daemon under it.
  sleep 0.5
  k0=$(cut -d' ' -f1 /proc/uptime)
  kill -9 $N; wait $N 2>/dev/null
  net_daemon </dev/null >/tmp/net-daemon2.log 2>&1 &
  N=$!
  want=1; [ "$kills" = 1 ] && want=2
  for i in $(seq 150); do [ "$(ctl info | grep -Eo '"reconnects":1[,}]' | wc -l)" = $want ] && break; sleep 0.2; done
  for i in $(seq 480); do kill -0 $NC 2>/dev/null || break; sleep 0.5; done
  result ${TAG}_tcp2_after_kill_secs=$(echo "$k0 $(cut -d' ' -f1 /proc/uptime)" | awk '{printf "%.2f", $2-$1}')
  kill $NC 2>/dev/null
  result ${TAG}_net_restart_rx_md5=$(md5sum < /tmp/tcp2.rx | cut -d' ' -f1) ${TAG}_net_restart_rx_bytes=$(wc -c < /tmp/tcp2.rx)
  result ${TAG}_info_net_reconnected=$(ctl info)
  nc -l -p 5002 < /tmp/hold > /dev/null &
  echo go >&3
fi
if wait_l2 ${TAG}_phase=clock; then
  ctl pause >/dev/null && result ${TAG}_pause=ok
  result ${TAG}_paused_state=$(ctl info | grep -o '"state":"[a-z-]*"' | cut -d'"' -f4)
  a=$(cut -d' ' -f1 /proc/uptime)
  sleep ${PAUSE_SECS}
  ctl resume >/dev/null && result ${TAG}_resume=ok
  b=$(cut -d' ' -f1 /proc/uptime)
  result ${TAG}_pause_l1_secs=$(echo "$a $b" | awk '{printf "%.2f", $2-$1}')
  echo go >&3
fi
if wait_l2 ${TAG}_phase=done; then
  e0=$(total_exits); sleep ${IDLE_SECS}; e1=$(total_exits)
  result ${TAG}_idle_exits=$((e1 - e0))
  result ${TAG}_info_done=$(ctl info)
  ctl shutdown >/dev/null && result ${TAG}_shutdown=ok
fi
wait $V
kill $HOLD 2>/dev/null
result ${TAG}_exit=$(cat /tmp/vexit)
exec 3>&-
tail -n 20 /tmp/${TAG}-daemon-k${BLK_KILLS}.log | sed "s/^/[${TAG}-daemon-restarted] /"
tail -n 20 /tmp/net-daemon2.log | sed 's/^/[net-daemon-restarted] /'
kill $N; wait $N 2>/dev/null
tail -n 20 /tmp/net-daemon.log | sed 's/^/[net-daemon] /'

# The L2 scenario (busybox sh, L2's init): CPUs seen, uptime at init,
# kernel release; with a disk: its size, the host's pattern read back, our
# own pattern written; with a NIC: ping and multiqueue; with L2API=1 the
# phases L1 drives through viaduct's API. The LOAD marker below becomes the
# crash-restart load (crate::restart_load).
T=${L2TAG:-l2}
if [ "$T" = panic ]; then
  echo c > /proc/sysrq-trigger
fi
result ${T}_cpus=$(nproc) ${T}_online=$(cat /sys/devices/system/cpu/online)
result ${T}_uptime=$(cut -d' ' -f1 /proc/uptime) ${T}_kernel=$(uname -r)
result ${T}_banner=$(dmesg | grep -c 'Linux version')
if [ -b /dev/vda ]; then
  result ${T}_vda=1 ${T}_vda_bytes=$(blockdev --getsize64 /dev/vda)
  D=$(basename $(readlink -f /sys/block/vda/device))
  result ${T}_msix=$(grep -c "PCI-MSIX.*$D-" /proc/interrupts)
  result ${T}_bar=$(grep -v '^0x0000000000000000' $(dirname $(readlink -f /sys/block/vda/device))/resource | head -1 | cut -d' ' -f1)
  result ${T}_host_md5=$(dd if=/dev/vda bs=1M skip=4 count=1 2>/dev/null | md5sum | cut -d' ' -f1)
  yes VIADUCT-GUEST-PATTERN | head -c 4194304 > /tmp/p
  result ${T}_wrote_md5=$(md5sum < /tmp/p | cut -d' ' -f1)
  dd if=/tmp/p of=/dev/vda bs=1M seek=16 conv=fsync 2>/dev/null && result ${T}_write=ok || result ${T}_write=failed
  echo 3 > /proc/sys/vm/drop_caches
  result ${T}_read_md5=$(dd if=/dev/vda bs=1M skip=16 count=4 2>/dev/null | md5sum | cut -d' ' -f1)
  result ${T}_mq=$(ls /sys/block/vda/mq | wc -l)
  # Driver reset and re-probe: the VMM stops the rings and sets them up again.
  echo $D > /sys/bus/virtio/drivers/virtio_blk/unbind
  echo $D > /sys/bus/virtio/drivers/virtio_blk/bind
  for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
  result ${T}_rebind_md5=$(dd if=/dev/vda bs=1M skip=16 count=4 2>/dev/null | md5sum | cut -d' ' -f1)
else
  result ${T}_vda=0
fi
if [ -e /sys/class/net/eth0 ]; then
  result ${T}_mac=$(cat /sys/class/net/eth0/address)
  E=$(basename $(readlink -f /sys/class/net/eth0/device))
  result ${T}_net_msix=$(grep -c "PCI-MSIX.*$E-" /proc/interrupts)
  ip link set eth0 up
  ip addr add 10.0.3.2/24 dev eth0
  n=0
  for i in 1 2 3 4 5; do
    n=$(ping -c 3 -W 1 10.0.3.1 2>/dev/null | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    [ "${n:-0}" -gt 0 ] && break
    sleep 1
  done
  result ${T}_ping=${n:-0}
  if [ -x /usr/sbin/ethtool ]; then
    # Multiqueue: the driver asked for one pair per CPU at probe (through
    # viaduct's control queue); switch to 1 and back, then send from
    # each CPU (XPS maps CPU i to TX queue i; the TAP answers a flow on
    # the queue it came from).
    result ${T}_combined=$(/usr/sbin/ethtool -l eth0 | awk '/Current/{c=1} c&&/Combined/{print $2; exit}')
    result ${T}_queues=$(ls /sys/class/net/eth0/queues | tr '\n' ,)
    /usr/sbin/ethtool -L eth0 combined 1 && /usr/sbin/ethtool -L eth0 combined 2 && result ${T}_set_channels=ok
    for c in 0 1; do
      result ${T}_ping_cpu$c=$(taskset -c $c ping -c 3 -W 1 10.0.3.1 2>/dev/null | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    done
    result ${T}_mq_errors=$(dmesg | grep -c 'queue pairs')
  fi
fi
# With L2API=1 on the command line, L1 drives a choreography through
# viaduct's API; "go" lines come from L1 through viaduct's serial input.
if [ -n "$L2API" ]; then
  if [ -e /sys/class/net/eth0 ]; then
    a0=$(cut -d' ' -f1 /proc/uptime)
    yes VIADUCT-TCP-PATTERN | head -c 16777216 | nc 10.0.3.1 5000
    result ${T}_tcp1_secs=$(echo "$a0 $(cut -d' ' -f1 /proc/uptime)" | awk '{printf "%.2f", $2-$1}')
    result ${T}_tcp_md5=$(yes VIADUCT-TCP-PATTERN | head -c 16777216 | md5sum | cut -d' ' -f1)
  fi
  # L1 SIGKILLs and restarts the blk daemon again and again under this
  # write-verify load (crate::restart_load).
  result ${T}_phase=load
@LOAD@
  result ${T}_phase=loaded
  read -r go
  # L1 kills and restarts the net daemon while this transfer runs.
  ( yes VIADUCT-NET-RESTART | head -c 16777216 | nc 10.0.3.1 5001; result ${T}_net_restart_sent=$? ) &
  result ${T}_net_restart_md5=$(yes VIADUCT-NET-RESTART | head -c 16777216 | md5sum | cut -d' ' -f1)
  result ${T}_phase=net
  read -r go
  wait
  a0=$(cut -d' ' -f1 /proc/uptime)
  yes VIADUCT-TCP-PATTERN | head -c 16777216 | nc 10.0.3.1 5002
  result ${T}_tcp3_secs=$(echo "$a0 $(cut -d' ' -f1 /proc/uptime)" | awk '{printf "%.2f", $2-$1}')
  u0=$(cut -d' ' -f1 /proc/uptime)
  result ${T}_phase=clock
  read -r go
  u1=$(cut -d' ' -f1 /proc/uptime)
  result ${T}_pause_guest_secs=$(echo "$u0 $u1" | awk '{printf "%.2f", $2-$1}')
  result ${T}_phase=done
  # viaduct ctl shutdown ends the VM while L2 waits here.
  read -r go
fi

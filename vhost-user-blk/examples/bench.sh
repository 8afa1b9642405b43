#!/bin/sh
# Guest-less figures: 4 KiB random reads against a 1 GiB raw file at QD1 and
# QD32, one queue, EVENT_IDX, 8 s per point. Compares this daemon with
# qemu-storage-daemon (aio=io_uring) through the same userspace frontend
# (examples/bench.rs), and fio (io_uring) straight on the file.
#
#   cargo build --release -p vhost-user-blk --bins --examples
#   cd /some/scratch/dir && sh /path/to/vhost-user-blk/examples/bench.sh
set -e
B=${B:-$(dirname "$0")/../../target/release}
[ -f disk.img ] || dd if=/dev/urandom of=disk.img bs=1M count=1024 status=none
SIZE=$(stat -c %s disk.img)
warm() { cat disk.img > /dev/null; }
vub() { # $1 = --cache mode
  rm -f vub.sock
  "$B/vhost-user-blk" --socket-path vub.sock --blk-file disk.img --cache "$1" --log-level warn & D=$!
  sleep 0.3
  for qd in 1 32; do warm; echo "viaduct cache=$1 $("$B/examples/bench" vub.sock $qd 8 "$SIZE")"; done
  kill -TERM $D; wait $D
}
qsd() { # $1 = cache.direct
  rm -f qsd.sock
  qemu-storage-daemon \
    --blockdev driver=file,node-name=file,filename=disk.img,aio=io_uring,cache.direct="$1" \
    --blockdev driver=raw,node-name=disk,file=file \
    --export type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path=qsd.sock,num-queues=1 & Q=$!
  sleep 1
  for qd in 1 32; do warm; echo "qsd aio=io_uring cache.direct=$1 $("$B/examples/bench" qsd.sock $qd 8 "$SIZE")"; done
  kill -TERM $Q; wait $Q || true
}
fiorun() { # $1 = direct
  for qd in 1 32; do
    warm
    fio --name=r --filename=disk.img --rw=randread --bs=4k --iodepth=$qd --ioengine=io_uring \
      --direct="$1" --runtime=8 --time_based --norandommap --invalidate=0 --output-format=terse \
      2>/dev/null | awk -F';' -v qd=$qd -v d="$1" '{print "fio io_uring direct=" d " qd=" qd " iops=" $8}'
  done
}
vub writeback; qsd off; fiorun 0
# Random writes (page cache), same frontend.
rm -f vub.sock; "$B/vhost-user-blk" --socket-path vub.sock --blk-file disk.img --log-level warn & D=$!; sleep 0.3
for qd in 1 32; do echo "viaduct $("$B/examples/bench" vub.sock $qd 8 "$SIZE" randwrite)"; done; kill -TERM $D; wait $D
vub none; qsd on; fiorun 1

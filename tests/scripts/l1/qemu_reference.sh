# Test host B (L1): the reference, QEMU with KVM booting the same bzImage
# and initramfs, timed like viaduct's runs.
# Shell variables and functions it uses come from the prelude tests/src/l2.rs
# writes before it (crate::shell::Prelude); lib.sh gives result().
a=$(cut -d' ' -f1 /proc/uptime)
${L1_BIN_DIR}/qemu-system-x86_64 -enable-kvm -cpu host -M pc -smp ${CPUS} -m ${MEMORY} \
  -nodefaults -display none -no-reboot -serial stdio \
  -kernel ${L1_GUEST_DIR}/bz -initrd ${L1_GUEST_DIR}/l2.cpio \
  -append 'console=ttyS0 reboot=k panic=-1 quiet L2TAG=qemu' </dev/null
result qemu_exit=$?
b=$(cut -d' ' -f1 /proc/uptime)
result qemu_vmm_secs=$(echo "$a $b" | awk '{printf "%.2f", $2-$1}')

# Test host B (L1): boots $KERNEL as L2 under viaduct and times it.
# Shell variables and functions it uses come from the prelude tests/src/l2.rs
# writes before it (crate::shell::Prelude); lib.sh gives result().
a=$(cut -d' ' -f1 /proc/uptime)
RUST_LOG=info ${L1_BIN_DIR}/viaduct --kernel ${L1_GUEST_DIR}/${KERNEL} --initramfs ${L1_GUEST_DIR}/l2.cpio \
  --cmdline "console=ttyS0 reboot=k panic=-1 quiet L2TAG=${TAG}${EXTRA_CMDLINE}" --cpus ${CPUS} --memory ${MEMORY} </dev/null
result ${TAG}_exit=$?
b=$(cut -d' ' -f1 /proc/uptime)
result ${TAG}_vmm_secs=$(echo "$a $b" | awk '{printf "%.2f", $2-$1}')

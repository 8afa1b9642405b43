# Test host B (L1): an L2 that panics at init; viaduct must say so and exit 1.
# Shell variables and functions it uses come from the prelude tests/src/l2.rs
# writes before it (crate::shell::Prelude); lib.sh gives result().
${L1_BIN_DIR}/viaduct --kernel ${L1_GUEST_DIR}/bz --initramfs ${L1_GUEST_DIR}/l2.cpio \
  --cmdline 'console=ttyS0 reboot=k panic=-1 quiet L2TAG=panic' --cpus 2 --memory 256M \
  </dev/null 2>/tmp/viaduct.err
result panic_exit=$?
result panic_reason=$(tr ' ' '_' < /tmp/viaduct.err)

# Test host B (L1): boots the bzImage L2 under viaduct with the disk on
# $SOCK (no API, no NIC).
# Shell variables and functions it uses come from the prelude tests/src/l2.rs
# writes before it (crate::shell::Prelude); lib.sh gives result().
RUST_LOG=info ${L1_BIN_DIR}/viaduct --kernel ${L1_GUEST_DIR}/bz --initramfs ${L1_GUEST_DIR}/l2.cpio \
  --cmdline "console=ttyS0 reboot=k panic=-1 quiet L2TAG=${TAG}" --cpus 2 --memory 256M \
  --disk socket=${SOCK},num_queues=2 </dev/null
result ${TAG}_exit=$?

# Test host B (L1): stops the disk daemon, shows its log, and reports what
# landed in the image.
# Shell variables and functions it uses come from the prelude tests/src/l2.rs
# writes before it (crate::shell::Prelude); lib.sh gives result().
kill $D; wait $D 2>/dev/null
tail -n 20 /tmp/${TAG}-daemon.log | sed "s/^/[${TAG}-daemon] /"
result ${TAG}_landed_md5=$(dd if=${IMAGE} bs=1M skip=16 count=4 2>/dev/null | md5sum | cut -d' ' -f1)

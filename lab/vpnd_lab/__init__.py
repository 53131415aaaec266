"""The lab: a real dual-tunnel setup in network namespaces (and, for a real kernel, a QEMU guest)."""

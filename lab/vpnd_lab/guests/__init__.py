"""Scripts that run inside a QEMU guest of the vm backend (python -m vpnd_lab.guests.<name>)."""

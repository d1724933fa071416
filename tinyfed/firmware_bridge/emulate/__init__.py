"""Boards in emulators (QEMU, Renode) and the firmware build they run."""

"""Emulation: run a compiled model as its target device would, on the build host."""

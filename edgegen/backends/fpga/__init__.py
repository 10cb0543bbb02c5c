"""The `fpga` backend: edgegen's own int8 NPU (`hw/npu/`), the compiler from the QDQ graph onto
it, and its emulation ladder (a bit-exact functional model in numpy, RTL simulation with Verilator)."""

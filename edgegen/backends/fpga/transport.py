"""How a host talks to an NPU: the interface a board link (UART, SPI) implements, and the byte
framing it speaks. The Verilator harness (hw/npu/sim/npu_tb.cpp) speaks the same frames, so the
RTL simulation is driven exactly as a board would be.

Frames, host to NPU (integers little-endian):
  'W' addr:u32 len:u32 data[len]   write bytes at host addresses addr.. -> 'K'
  'R' addr:u32 len:u32             read bytes                          -> data[len]
  'S'                              start the loaded program            -> 'K'
  'P' limit:u32                    wait up to `limit` cycles for done  -> status:u8 cycles:u32 layers:u32 clock:u64
Addresses are the NPU's host port (isa.REGIONS: region << 20 | byte offset).
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO

from ...errors import EdgegenError
from .isa import STATUS_DONE, STATUS_ERROR


class NpuError(EdgegenError):
    """The NPU did not run a program to its end (a wrong NPU configuration, or a broken link)."""


@dataclass
class RunStatus:
    """What the NPU reports after a run: status bits, its cycle counter, layers run, link clock."""

    status: int
    cycles: int
    layers: int
    clock: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.status & STATUS_DONE) and not self.status & STATUS_ERROR


class Transport(ABC):
    """A link to one NPU: byte writes and reads on its host port, start, and wait for done."""

    @abstractmethod
    def write(self, address: int, data: bytes) -> None: ...

    @abstractmethod
    def read(self, address: int, count: int) -> bytes: ...

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def wait(self, limit_cycles: int) -> RunStatus: ...

    def close(self) -> None:
        """Release the link."""


class FramedTransport(Transport):
    """The frames above over a pair of byte streams (a serial port's, or a simulator's pipes)."""

    CHUNK = 1 << 16

    def __init__(self, tx: BinaryIO, rx: BinaryIO):
        self.tx, self.rx = tx, rx

    def _send(self, frame: bytes) -> None:
        self.tx.write(frame)
        self.tx.flush()

    def _receive(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.rx.read(count - len(data))
            if not chunk:
                raise ConnectionError(f"the NPU link closed after {len(data)} of {count} reply bytes")
            data += chunk
        return data

    def _ack(self) -> None:
        if self._receive(1) != b"K":
            raise ConnectionError("the NPU did not acknowledge a frame")

    def write(self, address: int, data: bytes) -> None:
        for i in range(0, len(data), self.CHUNK):
            part = bytes(data[i:i + self.CHUNK])
            self._send(b"W" + struct.pack("<II", address + i, len(part)) + part)
            self._ack()

    def read(self, address: int, count: int) -> bytes:
        out = b""
        for i in range(0, count, self.CHUNK):
            n = min(self.CHUNK, count - i)
            self._send(b"R" + struct.pack("<II", address + i, n))
            out += self._receive(n)
        return out

    def start(self) -> None:
        self._send(b"S")
        self._ack()

    def wait(self, limit_cycles: int) -> RunStatus:
        self._send(b"P" + struct.pack("<I", min(limit_cycles, 0xFFFFFFFF)))
        status, cycles, layers, clock = struct.unpack("<BIIQ", self._receive(17))
        return RunStatus(status, cycles, layers, clock)

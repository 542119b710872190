"""TensorBoard event files of a run: scalars per epoch, readable by TensorBoard itself.

A small writer of the documented file format (TFRecord framing with masked CRC-32C around
serialized ``Event`` protocol buffers), so training needs neither TensorBoard nor protobuf
at run time (importing them costs seconds per job). Each process appends to a file of its own
(``events.out.tfevents.<time>.<host>.<pid>``) in ``<run>/tb/``; a resumed run first writes a
``SessionLog START`` at the epoch it resumes from, which makes TensorBoard drop the
interrupted run's later points. ``tensorboard --logdir results/runs`` shows every run.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

__all__ = ["EventWriter"]


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, wall: float, *, summary: bytes = b"", version: str = "",
           session_start: bool = False) -> bytes:
    """Serialized tensorflow.Event: wall_time (1), step (2), file_version (3), summary (5),
    session_log (7)."""
    out = b"\x09" + struct.pack("<d", wall) + _varint(2 << 3) + _varint(step)
    if version:
        out += _field_bytes(3, version.encode())
    if summary:
        out += _field_bytes(5, summary)
    if session_start:
        out += _field_bytes(7, _varint(1 << 3) + _varint(1))  # SessionLog.status = START
    return out


def _scalar_summary(values: dict[str, float]) -> bytes:
    """Serialized tensorflow.Summary with one simple_value per tag."""
    out = b""
    for tag, value in values.items():
        item = _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", float(value))
        out += _field_bytes(1, item)
    return out


class EventWriter:
    """Appends scalar events to this process's event file in ``folder`` (created on first use)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._fh = None

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self._fh = open(self.folder / name, "ab")  # noqa: SIM115 (kept open across epochs)
        self._write(_event(0, time.time(), version="brain.Event:2"))

    def _write(self, record: bytes) -> None:
        assert self._fh is not None
        header = struct.pack("<Q", len(record))
        self._fh.write(header + struct.pack("<I", _masked(crc32c(header))) + record
                       + struct.pack("<I", _masked(crc32c(record))))
        self._fh.flush()

    def start(self, step: int) -> None:
        """Mark a (re)start at ``step``: TensorBoard drops earlier files' points from it on."""
        if self._fh is None:
            self._open()
        self._write(_event(step, time.time(), session_start=True))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One event with every finite value of ``values`` at ``step``."""
        finite = {k: v for k, v in values.items()
                  if v is not None and v == v and abs(v) != float("inf")}
        if not finite:
            return
        if self._fh is None:
            self._open()
        self._write(_event(step, time.time(), summary=_scalar_summary(finite)))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

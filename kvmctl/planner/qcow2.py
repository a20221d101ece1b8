"""The internal snapshot table of a qcow2 image (QEMU's docs/interop/qcow2.txt):
how much of the file each snapshot's saved memory takes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

QCOW2_MAGIC = b"QFI\xfb"
QCOW2_HEADER_BYTES = 72


@dataclass(frozen=True)
class Qcow2Snapshot:
    id: str
    name: str
    date: int
    vm_state_bytes: int
    disk_bytes: int | None


def qcow2_snapshot_table(header: bytes) -> tuple[int, int]:
    """(count, offset) of the internal snapshot table from a qcow2 header."""
    if len(header) < QCOW2_HEADER_BYTES or header[:4] != QCOW2_MAGIC:
        raise ValueError("not a qcow2 image")
    count, offset = struct.unpack_from(">IQ", header, 60)
    return count, offset


def parse_qcow2_snapshots(table: bytes, count: int) -> list[Qcow2Snapshot]:
    """The entries of a qcow2 snapshot table (QEMU's docs/interop/qcow2.txt)."""
    out: list[Qcow2Snapshot] = []
    pos = 0
    for _ in range(count):
        if pos + 40 > len(table):
            raise ValueError("qcow2 snapshot table is truncated")
        (id_len, name_len, date_sec, _nsec, _clock, vm_state, extra_len) = struct.unpack_from(
            ">HHIIQII", table, pos + 12
        )
        extra = table[pos + 40 : pos + 40 + extra_len]
        if len(extra) >= 8:
            vm_state = struct.unpack_from(">Q", extra, 0)[0]
        disk = struct.unpack_from(">Q", extra, 8)[0] if len(extra) >= 16 else None
        at = pos + 40 + extra_len
        ident = table[at : at + id_len].decode("utf-8", "replace")
        name = table[at + id_len : at + id_len + name_len].decode("utf-8", "replace")
        end = at + id_len + name_len
        if end > len(table):
            raise ValueError("qcow2 snapshot table is truncated")
        out.append(Qcow2Snapshot(ident, name, date_sec, vm_state, disk))
        pos = end + (-end % 8)
    return out

"""The cloud-init NoCloud seed as ISO 9660 bytes (volume label `cidata`),
written in process with pycdlib: no external ISO tool on the host."""

from __future__ import annotations

import io

import pycdlib

from kvmctl.planner.cloudinit import SEED_LABEL, SeedPlan


def seed_iso(seed: SeedPlan) -> bytes:
    iso = pycdlib.PyCdlib()
    # Rock Ridge and Joliet keep the names cloud-init looks for ("meta-data"),
    # which plain ISO 9660 level 1 cannot hold.
    iso.new(interchange_level=3, vol_ident=SEED_LABEL, rock_ridge="1.09", joliet=3)
    for index, (name, content) in enumerate(seed.files):
        data = content.encode()
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            f"/FILE{index}.;1",
            rr_name=name,
            joliet_path=f"/{name}",
        )
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def read_seed(data: bytes) -> dict[str, str]:
    """File name -> content, read back through Rock Ridge names (tests, status)."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        out: dict[str, str] = {}
        for child in iso.list_children(rr_path="/"):
            name = child.rock_ridge.name().decode() if child.rock_ridge else ""
            if not name or name in (".", ".."):
                continue
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            out[name] = buf.getvalue().decode()
        return out
    finally:
        iso.close()

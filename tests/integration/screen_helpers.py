"""Reading a test guest's name back from a picture of its screen.

The guest's /init draws its name with `banner.awk`: a 5x7 block font whose
"pixels" are text cells with a coloured background (ANSI 41-46), in one
colour picked from the name. Nothing else on a guest's screen is strongly
coloured (BIOS and kernel text are grey), so the coloured cells alone give
the letters back, whatever the console (VGA text or fbcon) and the scaling.
"""

from __future__ import annotations

import re
import subprocess

from PIL import Image

from tests.integration.cockpit_helpers import REPO

BANNER_AWK = REPO / "guest-images" / "rootfs" / "usr" / "share" / "kvmctl" / "banner.awk"
_BLOCK = re.compile(r"\x1b\[4\dm( +)\x1b\[0m")


def _trim(rows: list[str]) -> list[str]:
    lit_cols = [i for i in range(len(rows[0])) if any(r[i] == "#" for r in rows)]
    return [r[lit_cols[0] : lit_cols[-1] + 1] for r in rows]


def banner_bitmap(name: str) -> list[str]:
    """The letters the guest draws for `name`, from the guest's own script:
    one string per font row, `#` a coloured block, `.` none, trimmed to the
    lit columns (names of up to one banner line)."""
    out = subprocess.run(
        ["awk", "-v", f"name={name}", "-f", str(BANNER_AWK)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = []
    width = 1
    for line in out.splitlines():
        blocks = _BLOCK.findall(line)
        if not blocks:
            continue  # padding, and the name line (foreground colour only)
        width = len(blocks[0])  # text cells per font pixel (2 for short names)
        cells = _BLOCK.sub(lambda m: "#" * len(m.group(1)), line)
        rows.append("".join("#" if c == "#" else "." for c in cells[::width]))
    assert len(rows) == 7, f"{name!r}: expected one banner line of 7 rows"
    size = max(len(r) for r in rows)
    return _trim([r.ljust(size, ".") for r in rows])


def _coloured(img: Image.Image) -> list[list[bool]]:
    """Strongly coloured, bright pixels: the banner's blocks (and its name line)."""
    hsv = img.convert("HSV")
    w, h = hsv.size
    px = hsv.load()
    return [[px[x, y][1] > 128 and px[x, y][2] > 80 for x in range(w)] for y in range(h)]


def read_banner(img: Image.Image, cols: int) -> list[str] | None:
    """The 7-row, `cols`-column block picture in a screen image, or None when
    nothing on it is coloured. The banner is the tallest band of rows with
    coloured pixels (the name line under it is one text row); each cell is
    read at its centre, away from the edges the scaling blurred."""
    mask = _coloured(img)
    bands: list[tuple[int, int]] = []
    start = None
    for y, row in enumerate([*mask, []]):
        if any(row) and start is None:
            start = y
        elif not any(row) and start is not None:
            bands.append((start, y))
            start = None
    if not bands:
        return None
    top, bottom = max(bands, key=lambda b: b[1] - b[0])
    xs = [x for y in range(top, bottom) for x, on in enumerate(mask[y]) if on]
    left, right = min(xs), max(xs) + 1
    cell_w, cell_h = (right - left) / cols, (bottom - top) / 7
    rows = []
    for r in range(7):
        row = ""
        for c in range(cols):
            x0, x1 = left + (c + 0.25) * cell_w, left + (c + 0.75) * cell_w
            y0, y1 = top + (r + 0.25) * cell_h, top + (r + 0.75) * cell_h
            pixels = [
                mask[y][x]
                for y in range(int(y0), max(int(y1), int(y0) + 1))
                for x in range(int(x0), max(int(x1), int(x0) + 1))
            ]
            row += "#" if sum(pixels) * 2 > len(pixels) else "."
        rows.append(row)
    return rows

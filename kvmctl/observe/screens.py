"""`kvmctl screens`: every VM's display composed into one picture of the cockpit.

Pure: takes each VM's screenshot bytes (PPM or PNG, as libvirt hands them
over) and what to write under it, and lays the tiles out the way the screens
sit in a car: the HUD on top (the windshield), then instrument cluster, IVI
and passenger screen from left to right; any other VM in a row below. A VM
that does not run (or has no display) gets a placeholder tile.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

SLOTS = ("hud", "cluster", "ivi", "passenger")
_KEYWORDS = {
    "cluster": ("cluster", "instrument"),
    "hud": ("hud", "head-up", "headup"),
    "ivi": ("ivi", "infotainment", "center", "centre"),
    "passenger": ("passenger", "rear", "copilot"),
}
TILE_W, TILE_H = 480, 300  # screen area of a tile
LABEL_H = 30
GAP = 16
BACKGROUND = (24, 26, 30)
PLACEHOLDER = (58, 60, 66)


@dataclass(frozen=True)
class Tile:
    vm: str
    role: str | None
    state: str
    uptime_s: float | None
    image: bytes | None  # the screenshot; None: placeholder
    note: str = ""  # why there is no picture


@dataclass(frozen=True)
class Box:
    vm: str
    slot: str
    x: int
    y: int
    w: int
    h: int  # the screen area (the label sits below it)
    source: str  # screen | placeholder

    def as_dict(self) -> dict[str, object]:
        return {
            "vm": self.vm,
            "slot": self.slot,
            "box": [self.x, self.y, self.w, self.h],
            "source": self.source,
        }


def slot_of(vm: str, role: str | None) -> str | None:
    """Which cockpit screen a VM drives, from its role (or else its name)."""
    for text in (role or "", vm):
        low = text.lower()
        for slot, words in _KEYWORDS.items():
            if any(w in low for w in words):
                return slot
    return None


def layout(tiles: Sequence[Tile]) -> tuple[int, int, list[tuple[Tile, str, int, int]]]:
    """(canvas width, height, [(tile, slot, x, y)]): HUD centred in the top row,
    cluster / IVI / passenger in the second, the rest below, three per row."""
    taken: dict[str, Tile] = {}
    others: list[Tile] = []
    for t in tiles:
        slot = slot_of(t.vm, t.role)
        if slot is not None and slot not in taken:
            taken[slot] = t
        else:
            others.append(t)
    cell_w, cell_h = TILE_W + GAP, TILE_H + LABEL_H + GAP
    placed: list[tuple[Tile, str, int, int]] = []
    row = 0
    if "hud" in taken:
        placed.append((taken["hud"], "hud", GAP + cell_w, GAP))
        row = 1
    if any(s in taken for s in ("cluster", "ivi", "passenger")):
        for col, slot in enumerate(("cluster", "ivi", "passenger")):
            if slot in taken:
                placed.append((taken[slot], slot, GAP + col * cell_w, GAP + row * cell_h))
        row += 1
    for i, t in enumerate(others):
        placed.append((t, "other", GAP + (i % 3) * cell_w, GAP + (row + i // 3) * cell_h))
    rows = row + (len(others) + 2) // 3
    return GAP + 3 * cell_w, GAP + max(rows, 1) * cell_h, placed


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _screen(tile: Tile) -> Image.Image | None:
    if tile.image is None:
        return None
    try:
        with Image.open(io.BytesIO(tile.image)) as img:
            return img.convert("RGB")
    except (OSError, ValueError):
        return None


def _placeholder() -> Image.Image:
    """Grey and hatched: never mistaken for a dark screen."""
    img = Image.new("RGB", (TILE_W, TILE_H), PLACEHOLDER)
    draw = ImageDraw.Draw(img)
    for k in range(-TILE_H, TILE_W, 24):
        draw.line((k, 0, k + TILE_H, TILE_H), fill=(70, 72, 78), width=3)
    return img


def compose(tiles: Sequence[Tile]) -> tuple[Image.Image, list[Box]]:
    """The cockpit picture and where each VM's screen area is in it."""
    width, height, placed = layout(tiles)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    label_font, big_font = _font(16), _font(28)
    boxes = []
    for tile, slot, x, y in placed:
        screen = _screen(tile)
        if screen is not None:
            screen.thumbnail((TILE_W, TILE_H))
            frame = Image.new("RGB", (TILE_W, TILE_H), (0, 0, 0))
            frame.paste(screen, ((TILE_W - screen.width) // 2, (TILE_H - screen.height) // 2))
            canvas.paste(frame, (x, y))
            source = "screen"
        else:
            canvas.paste(_placeholder(), (x, y))
            draw.text(
                (x + TILE_W // 2, y + TILE_H // 2 - 18),
                tile.vm,
                fill=(220, 220, 220),
                font=big_font,
                anchor="mm",
            )
            draw.text(
                (x + TILE_W // 2, y + TILE_H // 2 + 18),
                tile.note or tile.state,
                fill=(200, 160, 90),
                font=label_font,
                anchor="mm",
            )
            source = "placeholder"
        draw.rectangle((x, y + TILE_H, x + TILE_W - 1, y + TILE_H + LABEL_H - 1), fill=(40, 42, 48))
        state_colour = (120, 210, 120) if tile.state == "running" else (230, 120, 100)
        draw.text((x + 8, y + TILE_H + 7), tile.vm, fill=(235, 235, 235), font=label_font)
        draw.text(
            (x + TILE_W - 8, y + TILE_H + 7),
            tile.state if tile.uptime_s is None else f"{tile.state}  up {_uptime(tile.uptime_s)}",
            fill=state_colour,
            font=label_font,
            anchor="ra",
        )
        boxes.append(Box(tile.vm, slot, x, y, TILE_W, TILE_H, source))
    return canvas, boxes


def to_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()

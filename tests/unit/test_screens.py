"""Cockpit picture layout and composition on synthetic screenshots."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops

from kvmctl.observe.screens import (
    GAP,
    LABEL_H,
    TILE_H,
    TILE_W,
    Tile,
    compose,
    layout,
    slot_of,
    to_png,
)

pytestmark = pytest.mark.unit


def shot(
    colour: tuple[int, int, int], size: tuple[int, int] = (720, 400), fmt: str = "PPM"
) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("vm", "role", "slot"),
    [
        ("cluster", "instrument-cluster", "cluster"),
        ("dash", "instrument-cluster", "cluster"),
        ("hud", "ar-hud", "hud"),
        ("ivi", "infotainment", "ivi"),
        ("center", None, "ivi"),
        ("passenger", "passenger-screen", "passenger"),
        ("rear-left", None, "passenger"),
        ("gateway", None, None),
    ],
)
def test_slot_from_role_or_name(vm: str, role: str | None, slot: str | None) -> None:
    assert slot_of(vm, role) == slot


def tile(vm: str, role: str | None = None, image: bytes | None = None) -> Tile:
    return Tile(vm, role, "running" if image else "shut off", 65.0 if image else None, image)


def test_layout_is_a_cockpit() -> None:
    width, height, placed = layout(
        [tile("passenger"), tile("ivi"), tile("hud"), tile("cluster"), tile("gw"), tile("gw2")]
    )
    pos = {t.vm: (slot, x, y) for t, slot, x, y in placed}
    cell_w, cell_h = TILE_W + GAP, TILE_H + LABEL_H + GAP
    assert pos["hud"] == ("hud", GAP + cell_w, GAP)  # centred on top, like a windshield
    assert pos["cluster"] == ("cluster", GAP, GAP + cell_h)
    assert pos["ivi"] == ("ivi", GAP + cell_w, GAP + cell_h)
    assert pos["passenger"] == ("passenger", GAP + 2 * cell_w, GAP + cell_h)
    assert pos["gw"] == ("other", GAP, GAP + 2 * cell_h)
    assert pos["gw2"] == ("other", GAP + cell_w, GAP + 2 * cell_h)
    assert (width, height) == (GAP + 3 * cell_w, GAP + 3 * cell_h)


def test_second_vm_for_a_slot_goes_below() -> None:
    _, _, placed = layout([tile("ivi"), tile("ivi2", "infotainment")])
    assert [(t.vm, s) for t, s, _, _ in placed] == [("ivi", "ivi"), ("ivi2", "other")]


def test_compose_pastes_screens_and_placeholders() -> None:
    tiles = [
        tile("cluster", image=shot((255, 0, 0))),
        tile("ivi", image=shot((0, 0, 255), (1024, 600), "PNG")),
        tile("passenger"),
        Tile("hud", None, "running", 3.0, b"not an image", "no picture"),
    ]
    img, boxes = compose(tiles)
    by_vm = {b.vm: b for b in boxes}
    assert {b.vm: b.source for b in boxes} == {
        "cluster": "screen",
        "ivi": "screen",
        "passenger": "placeholder",
        "hud": "placeholder",
    }

    def crop(vm: str) -> Image.Image:
        b = by_vm[vm]
        return img.crop((b.x, b.y, b.x + b.w, b.y + b.h))

    centre = (TILE_W // 2, TILE_H // 2)
    assert crop("cluster").getpixel(centre) == (255, 0, 0)
    assert crop("ivi").getpixel(centre) == (0, 0, 255)
    # scaled to fit, aspect kept: 720x400 -> 480x266, letterboxed in black
    assert crop("cluster").getpixel((TILE_W // 2, 2)) == (0, 0, 0)
    assert ImageChops.difference(crop("passenger"), crop("cluster")).getbbox() is not None
    # placeholders differ by their label only
    assert ImageChops.difference(crop("passenger"), crop("hud")).getbbox() is not None


def test_png_round_trip() -> None:
    img, _ = compose([tile("cluster", image=shot((1, 2, 3)))])
    again = Image.open(io.BytesIO(to_png(img)))
    assert again.format == "PNG" and again.size == img.size

"""The pictures in docs/synthetic-data.md: slices of a generated volume, and its truth over one.

Generates a volume (1024 x 1024 x 64 at 50 x 10 x 10 nm, a mitotic cell included) into a temporary
folder, reads it back as any reader would, and writes

- ``docs/images/synth-slices.png``: four slices of one cell at different depths, one of them near a
  cap where the nucleus breaks into islands, at the subjects' scale (pyramid level 1, 20 nm/px);
- ``docs/images/synth-truth-overlay.png``: one slice at full resolution beside the same slice with
  the truth drawn over it (nucleus tinted, envelope band, nucleolus, organelles by class).

    .venv/bin/python bench/render_synth_docs.py [--seed 2] [--out docs/images]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from scipy import ndimage

from etchacell_loop.imaging.omezarr import read_etchacell_attrs
from etchacell_loop.imaging.synth_volume import SynthSpec, generate_volume
from etchacell_loop.imaging.volume import open_volume

CLASS_COLOURS = {
    "mitochondrion": (255, 150, 0),
    "lipid_droplet": (255, 230, 0),
    "vesicle": (0, 200, 255),
    "er": (60, 255, 60),
}
ENVELOPE_COLOUR = (255, 0, 255)
NUCLEOLUS_COLOUR = (255, 60, 60)
NUCLEUS_TINT = (80, 120, 255)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hela.zarr"
        generate_volume(path, SynthSpec(shape=(64, 1024, 1024), seed=args.seed, mitotic=True))
        slices_png(path, args.out / "synth-slices.png")
        overlay_png(path, args.out / "synth-truth-overlay.png")
    for name in ("synth-slices.png", "synth-truth-overlay.png"):
        print(f"{args.out / name}: {(args.out / name).stat().st_size / 1000:.0f} kB")


def array(path: Path) -> NDArray[Any]:
    return np.asarray(zarr.open_array(str(path), mode="r")[:])


def slices_png(path: Path, out: Path) -> None:
    """Four slices of the first cell: near its top cap (most islands), a quarter down, the middle,
    and near its bottom cap; 384 px crops of level 1."""
    with open_volume(path) as opened:
        roi = opened.rois[0]
    nucleus = array(path / "labels/nucleus/0")
    label = roi.nucleus_label or 1
    islands = [_islands(nucleus[z] == label) for z in range(nucleus.shape[0])]
    present = [z for z, n in enumerate(islands) if n > 0]
    first, last = present[0], present[-1]
    quarter = max(1, (last - first) // 4)
    top_cap = max(range(first, first + quarter), key=lambda z: islands[z])
    bottom_cap = max(range(last - quarter + 1, last + 1), key=lambda z: islands[z])
    middle = (first + last) // 2
    chosen = [top_cap, (top_cap + middle) // 2, middle, bottom_cap]
    image1 = array(path / "1")
    blank = set((read_etchacell_attrs(path) or {}).get("blank_slices", []))
    cy, cx = (roi.y + roi.height // 2) // 2, (roi.x + roi.width // 2) // 2
    size = 384
    y0 = int(np.clip(cy - size // 2, 0, image1.shape[1] - size))
    x0 = int(np.clip(cx - size // 2, 0, image1.shape[2] - size))
    panels = []
    for z in chosen:
        panel = Image.fromarray(image1[z, y0 : y0 + size, x0 : x0 + size]).convert("RGB")
        note = f"z = {z}" + (f"  ({islands[z]} islands)" if islands[z] > 1 else "")
        note += "  (blank: a lost cut)" if z in blank else ""
        _label(panel, note)
        panels.append(panel)
    grid = Image.new("RGB", (2 * size + 4, 2 * size + 4), (255, 255, 255))
    for k, panel in enumerate(panels):
        grid.paste(panel, ((k % 2) * (size + 4), (k // 2) * (size + 4)))
    grid.convert("L").save(out, optimize=True)


def overlay_png(path: Path, out: Path) -> None:
    """The middle slice of the first cell at 10 nm/px, raw beside the truth in colour."""
    with open_volume(path) as opened:
        roi = opened.rois[0]
    z = roi.z + roi.depth // 2
    size = 400
    y0 = int(np.clip(roi.y + roi.height // 2 - size // 2, 0, 1024 - size))
    x0 = int(np.clip(roi.x + roi.width // 2 - size // 2, 0, 1024 - size))
    window = np.s_[z, y0 : y0 + size, x0 : x0 + size]
    raw = array(path / "0")[window]
    nucleus = array(path / "labels/nucleus/0")[window] > 0
    envelope = array(path / "labels/envelope/0")[window] > 0
    nucleolus = array(path / "labels/nucleolus/0")[window] > 0
    organelles = array(path / "labels/organelles/0")[window]
    properties = json.loads((path / "labels/organelles/.zattrs").read_text())["image-label"]["properties"]
    classes = {p["label-value"]: p["class"] for p in properties}
    rgb = np.repeat(raw[..., None], 3, axis=2).astype(np.float32)
    _tint(rgb, nucleus & ~envelope & ~nucleolus, NUCLEUS_TINT, 0.25)
    _tint(rgb, nucleolus, NUCLEOLUS_COLOUR, 0.45)
    for value in np.unique(organelles[organelles > 0]):
        region = organelles == value
        _tint(rgb, region, CLASS_COLOURS[classes[int(value)]], 0.35)
        _tint(rgb, region & ~ndimage.binary_erosion(region), CLASS_COLOURS[classes[int(value)]], 0.9)
    _tint(rgb, envelope, ENVELOPE_COLOUR, 0.75)
    left = Image.fromarray(raw).convert("RGB")
    right = Image.fromarray(rgb.astype(np.uint8))
    _label(left, f"z = {z}, 10 nm/px")
    _legend(right)
    both = Image.new("RGB", (2 * size + 4, size), (255, 255, 255))
    both.paste(left, (0, 0))
    both.paste(right, (size + 4, 0))
    both.quantize(colors=128, dither=Image.Dither.NONE).save(out, optimize=True)


def _islands(mask: NDArray[np.bool_], min_area_px: int = 300) -> int:
    """Islands big enough to see at the subjects' scale."""
    labels, count = ndimage.label(mask)
    return int((np.bincount(labels.ravel())[1:] >= min_area_px).sum()) if count else 0


def _legend(panel: Image.Image) -> None:
    draw = ImageDraw.Draw(panel)
    entries = [
        ("nucleus", NUCLEUS_TINT),
        ("envelope", ENVELOPE_COLOUR),
        ("nucleolus", NUCLEOLUS_COLOUR),
        *((name.replace("_", " "), colour) for name, colour in CLASS_COLOURS.items()),
    ]
    x = 6
    draw.rectangle((2, 2, panel.width - 2, 18), fill=(0, 0, 0))
    for text, colour in entries:
        draw.text((x, 4), text, fill=colour)
        x = int(draw.textbbox((x, 4), text)[2]) + 10


def _tint(rgb: NDArray[np.float32], mask: NDArray[np.bool_], colour: tuple[int, int, int], alpha: float) -> None:
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, np.float32)


def _label(panel: Image.Image, text: str) -> None:
    draw = ImageDraw.Draw(panel)
    box = draw.textbbox((6, 4), text)
    draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(0, 0, 0))
    draw.text((6, 4), text, fill=(255, 255, 255))


if __name__ == "__main__":
    main()

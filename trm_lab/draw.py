"""Draw ARC grids as pictures: the standard palette, cell borders, PNG bytes with no dependency.

Inputs: grids (anything numpy reads as [h, w] with values 0..9; a 0x0 grid has no picture).
Outputs: RGB arrays [H, W, 3] uint8 (`grid_image`, `compose`), PNG bytes (`png_bytes`), and the
geometry a reader needs to find each cell again (`cell_box`).

Geometry of a drawn grid with cell side c: a 1-pixel border line around and between all cells, so
the picture is (h * (c + 1) + 1) x (w * (c + 1) + 1) pixels and cell (i, j) fills rows
1 + i * (c + 1) ... + c - 1 and columns 1 + j * (c + 1) ... + c - 1.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

# The colours of the ARC testing interface, 0..9: black, blue, red, green, yellow, grey, magenta,
# orange, azure, maroon.
PALETTE_HEX = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
               "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
PALETTE = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in PALETTE_HEX], np.uint8)  # [10, 3]
BORDER = np.array([85, 85, 85], np.uint8)  # the grey line between cells
BACKGROUND = np.array([255, 255, 255], np.uint8)
RIGHT = np.array([46, 160, 67], np.uint8)  # frame of a right attempt
WRONG = np.array([207, 34, 46], np.uint8)  # frame of a wrong attempt


def as_grid(grid: object, where: str = "grid") -> np.ndarray:
    """A validated uint8 [h, w] grid with values 0..9 (0x0 allowed)."""
    a = np.asarray(grid)
    if a.size == 0:
        return np.zeros((0, 0), np.uint8)
    if a.ndim != 2 or a.dtype.kind not in "iu" or a.min() < 0 or a.max() > 9:
        raise ValueError(f"{where}: expected a 2-D grid of integers 0..9, got {a.dtype} {a.shape}")
    return a.astype(np.uint8)


def cell_side(grid_side: int, target_px: int, lo: int, hi: int) -> int:
    """A cell side in pixels so that a grid of `grid_side` cells is about `target_px` wide."""
    return int(max(lo, min(hi, target_px // max(1, grid_side))))


def picture_size(h: int, w: int, cell: int) -> tuple[int, int]:
    """(height, width) in pixels of an h x w grid drawn with cell side `cell`."""
    return h * (cell + 1) + 1, w * (cell + 1) + 1


def cell_box(i: int, j: int, cell: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), exclusive ends, of cell (i, j) in a picture with cell side `cell`."""
    top, left = 1 + i * (cell + 1), 1 + j * (cell + 1)
    return top, left, top + cell, left + cell


def grid_image(grid: object, cell: int) -> np.ndarray:
    """The grid as RGB [H, W, 3] uint8: palette colours, grey border lines around every cell."""
    g = as_grid(grid)
    h, w = g.shape
    if h == 0:
        raise ValueError("a 0x0 grid has no picture")
    # colour every cell, then widen each cell to `cell` pixels and insert the border lines
    cells = PALETTE[g]  # [h, w, 3]
    big = np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)  # [h*c, w*c, 3]
    H, W = picture_size(h, w, cell)
    out = np.empty((H, W, 3), np.uint8)
    out[:] = BORDER
    rows = np.concatenate([np.arange(1 + i * (cell + 1), 1 + i * (cell + 1) + cell) for i in range(h)])
    cols = np.concatenate([np.arange(1 + j * (cell + 1), 1 + j * (cell + 1) + cell) for j in range(w)])
    out[np.ix_(rows, cols)] = big
    return out


def framed(image: np.ndarray, colour: np.ndarray, width: int = 3) -> np.ndarray:
    """`image` inside a solid frame of `width` pixels."""
    H, W, _ = image.shape
    out = np.empty((H + 2 * width, W + 2 * width, 3), np.uint8)
    out[:] = colour
    out[width:width + H, width:width + W] = image
    return out


def compose(rows: Sequence[Sequence[np.ndarray]], gap: int = 12) -> np.ndarray:
    """Pictures laid out in rows (top-aligned, left to right) on a white page, `gap` pixels apart."""
    heights = [max((p.shape[0] for p in row), default=0) for row in rows]
    widths = [sum(p.shape[1] for p in row) + gap * max(0, len(row) - 1) for row in rows]
    H = sum(heights) + gap * (len(rows) + 1)
    W = max(widths, default=0) + 2 * gap
    page = np.empty((max(H, 1), max(W, 1), 3), np.uint8)
    page[:] = BACKGROUND
    y = gap
    for row, height in zip(rows, heights):
        x = gap
        for p in row:
            page[y:y + p.shape[0], x:x + p.shape[1]] = p
            x += p.shape[1] + gap
        y += height + gap
    return page


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB [H, W, 3] uint8 array as PNG file bytes (8-bit truecolour, no interlace)."""
    a = np.ascontiguousarray(image, np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got {a.shape}")
    H, W, _ = a.shape
    raw = np.concatenate([np.zeros((H, 1), np.uint8), a.reshape(H, 3 * W)], axis=1)  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
            + chunk(b"IEND", b""))


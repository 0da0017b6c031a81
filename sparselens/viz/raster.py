"""Matrices as PNG images for large heatmaps (a T x T map is one image, not T^2 chart marks).

The colour map is a piecewise-linear viridis on a log10 scale; `COLOR_STOPS` is also handed to the chart's
colour scale (interpolated in RGB), so the legend shows exactly the colours of the image. No PIL needed: the PNG
is written with zlib.
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

COLOR_STOPS = (
    "#440154",
    "#482878",
    "#3e4989",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#fde725",
)  # viridis, 10 evenly spaced stops
FUTURE_RGB = (235, 235, 235)  # cells a query may not look at (above the causal diagonal)


def _rgb(hex_colors: tuple[str, ...]) -> np.ndarray:
    return np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in hex_colors], dtype=np.float64)  # [N, 3]


def colorize(values: np.ndarray, vmin: float, vmax: float, log: bool = True) -> np.ndarray:
    """values [R, C] -> uint8 RGB [R, C, 3]; NaN cells get FUTURE_RGB, values are clipped to [vmin, vmax]."""
    nan = np.isnan(values)
    v = np.clip(np.nan_to_num(values, nan=vmin), vmin, vmax)
    if log:
        v, lo, hi = np.log10(v), np.log10(vmin), np.log10(vmax)
    else:
        lo, hi = vmin, vmax
    x = (v - lo) / (hi - lo) * (len(COLOR_STOPS) - 1)  # [R, C] position along the stops
    stops = _rgb(COLOR_STOPS)
    i = np.clip(np.floor(x).astype(int), 0, len(COLOR_STOPS) - 2)
    frac = (x - i)[..., None]
    rgb = stops[i] * (1 - frac) + stops[i + 1] * frac  # [R, C, 3]
    rgb[nan] = FUTURE_RGB
    return np.round(rgb).astype(np.uint8)


def colorize_indexed(values: np.ndarray, vmin: float, vmax: float, levels: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """values [R, C] -> (uint8 indices [R, C], uint8 palette [levels + 1, 3]) on the log colour map: `levels` colours
    evenly spaced in log10 between vmin and vmax, the last entry FUTURE_RGB for NaN. A palette PNG of this is a
    third of a truecolour one before compression and compresses better (used where many maps share one page)."""
    if not 2 <= levels <= 255:
        raise ValueError(f"levels={levels} must be in [2, 255] (one byte per pixel, one entry kept for NaN)")
    palette = np.concatenate([colorize(np.geomspace(vmin, vmax, levels)[None, :], vmin, vmax)[0], [FUTURE_RGB]])
    nan = np.isnan(values)
    v = np.log10(np.clip(np.nan_to_num(values, nan=vmin), vmin, vmax))
    index = np.rint((v - np.log10(vmin)) / (np.log10(vmax) - np.log10(vmin)) * (levels - 1)).astype(np.uint8)
    return np.where(nan, levels, index).astype(np.uint8), palette.astype(np.uint8)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _png(rows: np.ndarray, width: int, height: int, color_type: int, extra: bytes = b"") -> bytes:
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter byte 0 on every row
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    idat = _chunk(b"IDAT", zlib.compress(raw, 9))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + idat + _chunk(b"IEND", b"")


def png_bytes(rgb: np.ndarray) -> bytes:
    """uint8 RGB [R, C, 3] -> PNG file bytes (8-bit truecolour, no filtering)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"png_bytes needs a uint8 [rows, cols, 3] array, got {rgb.dtype} {rgb.shape}")
    h, w, _ = rgb.shape
    return _png(rgb.reshape(h, w * 3), w, h, 2)


def png_palette_bytes(index: np.ndarray, palette: np.ndarray) -> bytes:
    """uint8 palette indices [R, C] and uint8 palette [N, 3] (N <= 256) -> PNG file bytes (8-bit indexed colour)."""
    if index.dtype != np.uint8 or index.ndim != 2 or palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"need uint8 indices [rows, cols] and a palette [N, 3], got {index.shape}, {palette.shape}")
    if not 1 <= len(palette) <= 256 or int(index.max()) >= len(palette):
        raise ValueError(f"palette of {len(palette)} colours does not cover index {int(index.max())}")
    h, w = index.shape
    return _png(index, w, h, 3, _chunk(b"PLTE", palette.astype(np.uint8).tobytes()))


def data_url(png: bytes) -> str:
    """A `data:` URL of PNG bytes (embeds the image in a chart or page, nothing is fetched)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def upscale(rgb: np.ndarray, min_side: int) -> np.ndarray:
    """Repeat pixels so the image ([R, C] or [R, C, 3]) is at least `min_side` pixels across: small maps stay
    sharp when scaled."""
    factor = max(1, -(-min_side // max(rgb.shape[:2])))
    return rgb.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else rgb


def max_pool(values: np.ndarray, factor: int) -> np.ndarray:
    """Shrink values [R, C] by `factor` per side keeping each block's largest value (NaN only if all are NaN).

    Sparse maps stay visible at display size: averaging pixels (what a renderer does) would dim a single strong
    key to the background colour.
    """
    if factor <= 1:
        return values
    r, c = values.shape
    rp, cp = -(-r // factor) * factor, -(-c // factor) * factor
    padded = np.full((rp, cp), np.nan, dtype=np.float64)
    padded[:r, :c] = values
    blocks = padded.reshape(rp // factor, factor, cp // factor, factor)
    filled = np.where(np.isnan(blocks), -np.inf, blocks).max(axis=(1, 3))
    return np.where(np.isneginf(filled), np.nan, filled)

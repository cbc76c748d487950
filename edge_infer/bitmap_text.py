"""Text drawn into RGB arrays with a built-in 5x7 bitmap font (no imaging library needed).

Used by the overlay's slice numbers and colour key. Letters are drawn upper case; a
character outside the font is drawn as ``?``. Pure functions on ``[H, W, 3]`` uint8 arrays.
"""

from __future__ import annotations

import numpy as np

GLYPH_W, GLYPH_H = 5, 7
#: each glyph: its character, then its 7 rows as base-32 digits (5 bits, leftmost pixel first)
_FONT = (
    "AEHHVHHH BUHHUHHU CEHGGGHE DSIHHHIS EVGGUGGV FVGGUGGG GEHGNHHF HHHHVHHH IE44444E J72222IC "
    "KHIKOKIH LGGGGGGV MHRLLHHH NHHPLJHH OEHHHHHE PUHHUGGG QEHHHLID RUHHUKIH SFGGE11U TV444444 "
    "UHHHHHHE VHHHHHA4 WHHHLLLA XHHA4AHH YHHHA444 ZV1248GV 0EHJLPHE 14C4444E 2EH1248V 3V2421HE "
    "426AIV22 5VGU11HE 668GUHHE 7V124888 8EHHEHHE 9EHHF12C -000V000 _000000V :0CC0CC0 .00000CC "
    "/01248G0 (2488842 )8422248 =00V0V00 ,0000C48 ?EH12404 +044V440"
)


def _glyphs() -> dict[str, np.ndarray]:
    bits = 1 << np.arange(GLYPH_W - 1, -1, -1)
    out = {" ": np.zeros((GLYPH_H, GLYPH_W), bool)}
    for item in _FONT.split():
        rows = np.array([int(d, 32) for d in item[1:]])
        out[item[0]] = (rows[:, None] & bits) > 0
    return out


GLYPHS = _glyphs()


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """Boolean ``[7*scale, 6*scale*len(text)]`` mask of ``text`` (one blank column per character)."""
    cells = [np.pad(GLYPHS.get(c, GLYPHS["?"]), ((0, 0), (0, 1))) for c in text.upper()]
    mask = np.concatenate(cells, axis=1) if cells else np.zeros((GLYPH_H, 0), bool)
    return np.kron(mask, np.ones((scale, scale), bool)).astype(bool)


def text_width(text: str, scale: int = 1) -> int:
    """Width in pixels of ``text`` as :func:`draw_text` draws it."""
    return (GLYPH_W + 1) * scale * len(text)


def draw_text(rgb: np.ndarray, text: str, top: int, left: int, scale: int = 1,
              colour: tuple[int, int, int] = (255, 255, 255), outline: bool = True) -> None:
    """Draw ``text`` into ``rgb`` in place, its top-left corner at ``(top, left)``; clipped
    at the edges. ``outline`` puts a one-pixel black border around the strokes so the text
    reads on any background."""
    mask = text_mask(text, scale)
    if outline:
        halo = np.pad(mask, 1)
        ring = np.zeros_like(halo)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ring |= np.roll(np.roll(halo, dy, axis=0), dx, axis=1)
        _paint(rgb, ring, top - 1, left - 1, (0, 0, 0))
    _paint(rgb, mask, top, left, colour)


def _paint(rgb: np.ndarray, mask: np.ndarray, top: int, left: int, colour: tuple[int, int, int]) -> None:
    h, w = rgb.shape[:2]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + mask.shape[0], h), min(left + mask.shape[1], w)
    if y1 <= y0 or x1 <= x0:
        return
    sub = mask[y0 - top:y1 - top, x0 - left:x1 - left]
    rgb[y0:y1, x0:x1][sub] = colour

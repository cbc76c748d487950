"""Tests of the overlay montage's slice numbers and colour key, and of the bitmap text they use."""

from __future__ import annotations

import numpy as np
import pytest

from edge_infer.bitmap_text import GLYPH_H, draw_text, text_mask, text_width
from edge_infer.writers import LABEL_COLOURS, colour_key, input_slice_numbers, overlay_montage

WHITE = (255, 255, 255)


def white_at(rgb: np.ndarray, text: str, top: int, left: int, scale: int) -> bool:
    """Whether ``text`` is drawn in white with its top-left corner at ``(top, left)``."""
    m = text_mask(text, scale)
    crop = rgb[top:top + m.shape[0], left:left + m.shape[1]]
    return crop.shape[:2] == m.shape and bool(np.all(crop[m] == WHITE)) and not np.all(crop[~m] == WHITE)


class TestTextMask:
    def test_size_and_case(self):
        m = text_mask("k=12", 2)
        assert m.shape == (GLYPH_H * 2, text_width("k=12", 2))
        assert np.array_equal(text_mask("abc"), text_mask("ABC"))

    def test_unknown_character_drawn_as_question_mark(self):
        assert np.array_equal(text_mask("é"), text_mask("?"))
        assert not text_mask(" ").any() and text_mask("?").any()

    def test_glyphs_differ(self):
        masks = {c: text_mask(c).tobytes() for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_:./()=,?+"}
        assert len(set(masks.values())) == len(masks)


class TestDrawText:
    def test_clipped_at_edges(self):
        rgb = np.zeros((5, 8, 3), np.uint8)
        draw_text(rgb, "88", -2, 3)
        assert rgb.any() and rgb.shape == (5, 8, 3)

    def test_outline_is_black_around_white(self):
        rgb = np.full((20, 20, 3), 255, np.uint8)
        draw_text(rgb, "1", 5, 5)
        assert white_at(rgb, "1", 5, 5, 1) and (rgb == 0).all(axis=-1).sum() > 0


class TestInputSliceNumbers:
    def test_without_transform(self):
        axis, idx = input_slice_numbers(None, 4)
        assert axis == "k" and list(idx) == [0, 1, 2, 3]

    def test_flipped_axis(self):
        axis, idx = input_slice_numbers(np.array([[0, 1], [1, 1], [2, -1]]), 4)
        assert axis == "k" and list(idx) == [3, 2, 1, 0]

    def test_permuted_axis(self):
        """A sagittal-stored scan: its first file axis becomes the RAS superior axis."""
        axis, idx = input_slice_numbers(np.array([[2, 1], [0, -1], [1, 1]]), 3)
        assert axis == "i" and list(idx) == [0, 1, 2]


class TestColourKey:
    NAMES = {2: "edema", 1: "necrotic_core", 4: "enhancing", 9: "no colour"}

    def test_swatch_and_name_of_each_label(self):
        strip = colour_key(self.NAMES, 600, scale=1)
        colours = {tuple(int(v) for v in c) for c in strip.reshape(-1, 3)} - {(0, 0, 0), WHITE}
        assert colours == {LABEL_COLOURS[v] for v in (1, 2, 4)}
        pad = 3
        assert white_at(strip, "1 necrotic core", pad, pad + GLYPH_H + pad, 1)

    def test_wraps_when_narrow(self):
        one_line = colour_key(self.NAMES, 600).shape[0]
        assert colour_key(self.NAMES, 120).shape[0] > one_line


class TestOverlayMontage:
    def volume(self):
        img = np.random.default_rng(0).uniform(0, 500, (40, 30, 20)).astype(np.float32)
        lab = np.zeros(img.shape, np.uint8)
        lab[10:20, 10:20, 5:15] = 2
        lab[12:16, 12:16, 8:12] = 4
        return img, lab

    def test_tiles_show_input_slice_numbers(self):
        img, lab = self.volume()
        rgb = overlay_montage(img, lab, n=4, cols=2, transform=np.array([[0, 1], [1, 1], [2, -1]]))
        # first tile: RAS slice 5 (the mask's first), file slice 20 - 1 - 5
        assert white_at(rgb, "k=14", 2, 2, 1)
        assert not white_at(rgb, "k=5", 2, 2, 1)

    def test_colour_key_below_tiles(self):
        img, lab = self.volume()
        rgb = overlay_montage(img, lab, n=4, cols=2, label_names={2: "edema", 4: "enhancing"})
        tiles_h = 2 * lab.shape[1]
        assert rgb.shape[0] > tiles_h and rgb.shape[1] == 2 * lab.shape[0]
        assert np.array_equal(rgb[tiles_h:], colour_key({2: "edema", 4: "enhancing"}, rgb.shape[1]))

    def test_key_from_mask_values_without_names(self):
        img, lab = self.volume()
        rgb = overlay_montage(img, lab, n=4, cols=2)
        assert np.array_equal(rgb[2 * lab.shape[1]:], colour_key({2: "2", 4: "4"}, rgb.shape[1]))

    @pytest.mark.parametrize("size, scale", [(40, 1), (240, 2)])
    def test_text_grows_with_tiles(self, size, scale):
        img = np.ones((size, size, 4), np.float32)
        rgb = overlay_montage(img, np.zeros(img.shape, np.uint8), n=1, cols=1)
        assert white_at(rgb, "k=0", 2 * scale, 2 * scale, scale)

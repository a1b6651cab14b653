"""Tests for volscore/metrics/seams.py: the seam score is about 1 for a smooth field on any grid, well above
1 for a field with steps on its tile grid (and not on another grid), and refuses a volume it cannot score.
Seeded 32^3 fields."""

from __future__ import annotations

import pytest
import torch
from phantoms import smooth_field

from volscore.metrics.seams import seam_score


def test_seam_score_detects_tile_offsets():
    field = smooth_field((32, 32, 32))
    assert 0.85 < seam_score(field, 8) < 1.15
    assert 0.85 < seam_score(field, 8, offset=(3, 5, 1)) < 1.15
    steps = torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(1)) * field.std()
    tiled = field + steps.repeat_interleave(8, 0).repeat_interleave(8, 1).repeat_interleave(8, 2)
    assert seam_score(tiled, 8) > 2
    assert seam_score(tiled, 8, offset=(4, 4, 4)) < 1.5  # another grid does not see those seams as its own


def test_seam_score_refuses_a_volume_without_seams_or_variation():
    with pytest.raises(ValueError, match="no tile boundary"):
        seam_score(smooth_field((6, 6, 6)), 8)  # smaller than one tile: no boundary to score
    with pytest.raises(ValueError, match="no variation"):
        seam_score(torch.ones(16, 16, 16), 8)

"""Quarter turns and vertical flips against numpy's rot90 / flipud, image by image."""

import numpy as np
import torch

from mochi_hvs.data.orientation import RandomOrientation, draw_orientations, orient


def test_orient_matches_numpy_per_image():
    x = torch.arange(8 * 2 * 5 * 5, dtype=torch.float32).view(8, 2, 5, 5)
    turns = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    vflip = torch.tensor([False] * 4 + [True] * 4)
    out = orient(x, turns, vflip)
    for i in range(8):
        expected = np.rot90(x[i].numpy(), int(turns[i]), axes=(1, 2))
        expected = expected[:, ::-1] if vflip[i] else expected
        np.testing.assert_array_equal(out[i].numpy(), expected)
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8  # the eight symmetries of the square, all distinct


def test_draws_are_seeded_and_cover_every_orientation():
    turns, vflip = draw_orientations(400, torch.Generator().manual_seed(0))
    assert set(turns.tolist()) == {0, 1, 2, 3} and 0 < int(vflip.sum()) < 400
    again = draw_orientations(400, torch.Generator().manual_seed(0))
    assert torch.equal(turns, again[0]) and torch.equal(vflip, again[1])


def test_random_orientation_is_one_of_the_symmetries():
    image = torch.arange(2 * 4 * 4).view(2, 4, 4)
    symmetries = [orient(image[None], torch.tensor([k]), torch.tensor([f]))[0] for k in range(4)
                  for f in (False, True)]
    torch.manual_seed(0)
    for _ in range(10):
        out = RandomOrientation()(image)
        assert any(torch.equal(out, s) for s in symmetries)

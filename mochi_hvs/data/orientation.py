"""Orientation invariance for images without an up (tissue, cells): a rotation by a multiple of 90 degrees and a
vertical flip, drawn per view. With aug+'s horizontal flip these reach all eight symmetries of the square."""

from __future__ import annotations

import torch

VFLIP_P = 0.5
QUARTER_TURNS = 4


def orient(x: torch.Tensor, turns: torch.Tensor, vflip: torch.Tensor) -> torch.Tensor:
    """Square images (N, C, S, S), each turned `turns[i]` quarter turns counter-clockwise (0-3) and then flipped
    upside down where `vflip[i]`."""
    out = x.clone()
    for k in range(1, QUARTER_TURNS):
        chosen = (turns == k).nonzero().squeeze(1)
        if chosen.numel():
            out[chosen] = torch.rot90(x.index_select(0, chosen), k, dims=(-2, -1))
    return torch.where(vflip.view(-1, 1, 1, 1), out.flip(-2), out)

def draw_orientations(n: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Quarter turns (n,) in 0-3 and vertical flips (n,) bool, turns first, from `generator` (global when None)."""
    turns = torch.randint(0, QUARTER_TURNS, (n,), generator=generator, device=device)
    return turns, torch.rand(n, generator=generator, device=device) < VFLIP_P


class RandomOrientation:
    """One image's random orientation for the per-sample (cpu) path: a (C, S, S) tensor in, the same turned and
    possibly flipped out; drawn from the global generator (seeded per sample by the loader)."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        turns, vflip = draw_orientations(1)
        return orient(image[None], turns, vflip)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

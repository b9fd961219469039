"""Every random draw of a run comes from a generator seeded by (run seed, stream, position): the data order by
epoch, the views by (epoch, sample) or (epoch, batch, rank), and each part of a step by (step, rank). A part
draws only from its own stream, so switching one part on or off (or running it more or less often) leaves every
other part's randomness unchanged, and a resumed run redraws exactly what a straight run draws."""

from __future__ import annotations

import zlib

import numpy as np
import torch

# Fixed stream numbers of the data path and of the step's parts; a stream not listed here (a new method's) is
# numbered from its name.
STREAMS = {"order": 0, "views": 1, "shuffle": 2, "mochi": 3, "hvs": 4}


def stream_number(name: str) -> int:
    """The number of a named stream (fixed for the listed ones, a CRC of the name above them otherwise)."""
    return STREAMS[name] if name in STREAMS else len(STREAMS) + zlib.crc32(name.encode())


def stream_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (run seed, stream, epoch, index...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class StepRandom:
    """Independent generators for one step, one per named stream, seeded by (run seed, stream, step, rank)."""

    def __init__(self, seed: int, step: int, rank: int, device: torch.device) -> None:
        self.seed, self.step, self.rank, self.device = seed, step, rank, device
        self._generators: dict[str, torch.Generator] = {}

    def __call__(self, stream: str) -> torch.Generator:
        """The generator of `stream` for this step (created on first use)."""
        if stream not in self._generators:
            seed = stream_seed(self.seed, stream_number(stream), self.step, self.rank)
            self._generators[stream] = torch.Generator(device=self.device).manual_seed(seed)
        return self._generators[stream]

"""The collapse monitor: its measures against explicit float64 computations, its verdicts and its settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mochi_hvs.collapse import CollapseMonitor, CollapseSignal, embedding_std, rankme, read
from mochi_hvs.config import CollapseConfig, ConfigError, load_config


def normalised(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def numpy_std(z: np.ndarray) -> float:
    """Mean over dimensions of the unbiased per-dimension std of the L2-normalised rows."""
    return float(np.std(normalised(z), axis=0, ddof=1).mean())


def numpy_rankme(z: np.ndarray) -> float:
    """exp(-sum p log p), p the singular values of the L2-normalised rows divided by their sum (0 log 0 = 0)."""
    s = np.linalg.svd(normalised(z), compute_uv=False)
    p = s[s > 0] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def test_the_measures_match_explicit_float64_computations():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((64, 32)) * np.linspace(0.1, 3.0, 32) + 0.5  # anisotropic, off-centre
    assert embedding_std(torch.tensor(z, dtype=torch.float32)) == pytest.approx(numpy_std(z), rel=1e-6)
    assert rankme(torch.tensor(z, dtype=torch.float32)) == pytest.approx(numpy_rankme(z), rel=1e-6)
    assert 1 < numpy_rankme(z) < 32


def test_constant_embeddings_are_collapsed():
    z = torch.randn(1, 128).repeat(32, 1) * 7.0  # every input on one point (any scale)
    assert embedding_std(z) == pytest.approx(0.0, abs=1e-12)
    assert rankme(z) == pytest.approx(1.0, abs=1e-9)
    reading = read(CollapseSignal(z), CollapseConfig())
    assert reading.collapsed and reading.std_ratio < 1e-10 and reading.loss_gap is None


def test_isotropic_gaussian_embeddings_are_spread():
    torch.manual_seed(1)
    n, d = 512, 128
    z = torch.randn(n, d)
    assert embedding_std(z) == pytest.approx(1 / math.sqrt(d), rel=0.02)
    rank = rankme(z)
    assert rank == pytest.approx(numpy_rankme(z.double().numpy()), rel=1e-9) and rank > 0.8 * d
    reading = read(CollapseSignal(z, torch.tensor(2.0), math.log(33)), CollapseConfig())
    assert not reading.collapsed and reading.std_ratio == pytest.approx(1.0, rel=0.02)
    assert reading.loss_gap == pytest.approx(2.0 - math.log(33), rel=1e-6)


def test_a_loss_at_its_uniform_value_is_collapsed_even_with_spread_embeddings():
    z = torch.randn(64, 128)
    pinned = read(CollapseSignal(z, torch.tensor(math.log(33) + 5e-5), math.log(33)), CollapseConfig())
    learning = read(CollapseSignal(z, torch.tensor(math.log(33) - 0.01), math.log(33)), CollapseConfig())
    assert pinned.collapsed and not learning.collapsed
    assert pinned.metrics()["collapse/collapsed"] == 1.0 and learning.metrics()["collapse/collapsed"] == 0.0


def test_the_monitor_stops_only_after_patience_consecutive_collapsed_checks():
    monitor = CollapseMonitor(CollapseConfig(patience=3))
    collapsed, spread = CollapseSignal(torch.ones(16, 8)), CollapseSignal(torch.randn(16, 8))
    for step, signal in enumerate([collapsed, collapsed, spread, collapsed, spread, spread], start=1):
        monitor.check(signal, step)
        assert not monitor.stays_collapsed
    assert monitor.since is None and monitor.summary()["collapsed"] is False
    for step in (7, 8, 9):
        monitor.check(collapsed, step)
    assert monitor.stays_collapsed and monitor.since == 7 and monitor.streak == 3
    summary = monitor.summary()
    assert summary["collapsed"] is True and summary["since_step"] == 7 and summary["rank"] == pytest.approx(1.0)


def test_collapse_settings_are_validated_and_unknown_keys_refused():
    cfg = load_config(None, ["collapse.stop=false", "collapse.patience=2", "collapse.min_rank=1.2"])
    assert (cfg.collapse.stop, cfg.collapse.patience, cfg.collapse.min_rank) == (False, 2, 1.2)
    with pytest.raises(ConfigError, match=r"unknown key 'collapse.patiense' \(did you mean 'collapse.patience'\?\)"):
        load_config(None, ["collapse.patiense=3"])
    with pytest.raises(ConfigError, match="'collapse.patience' must be >= 1; got 0"):
        load_config(None, ["collapse.patience=0"])
    with pytest.raises(ConfigError, match="'collapse.min_std' must be >= 0"):
        load_config(None, ["collapse.min_std=-0.1"])

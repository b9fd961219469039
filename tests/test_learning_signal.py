"""The default recipe learns on real data: a short run beats its own random initialisation on kNN.

Deselected by default (`-m learning` runs it): the shortest run of the default that shows it is two epochs over
all 60k images, 18 minutes on a 2-core AVX2 CPU, more than the whole suite's budget. The study results under
results/ show the same from the full-set evaluators with seeds."""

from __future__ import annotations

import json

import pytest

from mochi_hvs import pretrain


@pytest.mark.slow
@pytest.mark.learning
def test_two_epochs_of_the_default_recipe_beats_random_init_on_knn(tmp_path, capsys):
    # The first two epochs of the README's default run (all 60k Fashion-MNIST images, 468 steps of 256)
    # at its near-constant early learning rate: one epoch, or a cosine decayed to zero within the run,
    # learns too little to show above a random-init kNN that is itself strong (73%) on this dataset.
    # The run is seeded, so the margin moves only when the code does; it was +3.0 points (76.15 vs 73.15) when written.
    status = pretrain.main(["--config", "configs/moco_v2.yaml", "--set", f"output_dir={tmp_path}",
                            "name=signal", "optim.epochs=2", "optim.schedule=constant"])
    assert status == 0
    summary = json.loads((tmp_path / "signal" / "summary.json").read_text())
    assert summary["steps"] == 468 and summary["init_from"] is None
    assert summary["knn_top1"] > summary["init_knn_top1"] + 1.5, summary
    printed = capsys.readouterr().out
    assert f"MoCo-pretrained{summary['knn_top1']:>24.2f}%" in printed
    assert f"random init{summary['init_knn_top1']:>28.2f}%" in printed

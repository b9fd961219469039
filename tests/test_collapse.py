"""The collapse monitor: its measures against explicit float64 computations, its verdicts, and what a run does
with them (log, warn, stop by default, keep going on request, record in the summary and the study report)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from mochi_hvs import pretrain
from mochi_hvs.collapse import CollapseMonitor, CollapseSignal, embedding_std, rankme, read
from mochi_hvs.config import CollapseConfig, ConfigError, load_config
from mochi_hvs.errors import TrainingCollapsed
from mochi_hvs.study.report import write_report
from mochi_hvs.train import Trainer
from mochi_hvs.weights.checkpoint import load_checkpoint

# The MoCo-v2 run that ends "successfully" collapsed (loss flat at ln 33, kNN at chance), at the smallest
# settings; log_every=1 checks after every step. SAVE_EACH_STEP saves after every step too, for the tests that read
# which checkpoint was the last good one (a ResNet-18 checkpoint takes most of a toy step's time).
TOY = ["device=cpu", "data.train_subset=64", "data.image_size=16", "optim.batch_size=16", "moco.queue_size=32",
       "data.workers=0", "eval.knn_k=5", "eval.knn_train_subset=100", "eval.knn_test_subset=50", "model.bn_splits=2",
       "seed=3", "log_every=1", "eval.knn_every=0", "eval.knn_baseline=false", "eval.knn_pixels=false"]
SAVE_EACH_STEP = "checkpoint_every=1"
RECIPE = "configs/moco_v2.yaml"


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


def test_zero_embeddings_have_no_direction_and_are_collapsed():
    z = torch.zeros(16, 128)  # what the optim.lr=10000 run hands over
    assert embedding_std(z) == 0.0 and rankme(z) == 0.0
    assert read(CollapseSignal(z), CollapseConfig()).collapsed


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


def collapse_lines(run_dir) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "collapse/rank" in line]


def test_the_collapsed_toy_run_stops_by_default_naming_the_step_and_the_last_good_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "lr50"
    code = pretrain.main(["--config", RECIPE, "--set", *TOY, SAVE_EACH_STEP, "optim.lr=50", "optim.steps=40",
                          f"output_dir={tmp_path}", "name=lr50"])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    message = err.split("error: ")[1].splitlines()[0]
    found = re.fullmatch(r"representation collapsed at step (\d+) \(epoch \d+\): 5 checks in a row since step (\d+), "
                         r"the last with embedding std (\S+)% of a spread one's .*; training stopped\. "
                         r"Last good checkpoint: (\S+) \(step (\d+)\)\. collapse\.stop=false keeps going", message)
    assert found, message
    step, since, std, checkpoint, good = found.groups()
    assert int(step) == int(since) + 4 and float(std) < 2  # percent, below collapse.min_std
    assert checkpoint == str(run_dir / "last.pth") and int(good) == int(since) - 1  # saved before the collapse only
    assert load_checkpoint(checkpoint)["global_step"] == int(good)
    assert out.count("warning: step") == 5 and "the representation looks collapsed" in out
    assert [line["collapse/collapsed"] for line in collapse_lines(run_dir)][-5:] == [1.0] * 5
    assert not (run_dir / "summary.json").exists()


def test_with_collapse_stop_off_the_toy_run_completes_and_its_summary_records_the_collapse(tmp_path, capsys):
    run_dir = tmp_path / "lr50"
    code = pretrain.main(["--config", RECIPE, "--set", *TOY, "optim.lr=50", "optim.steps=8", "collapse.stop=false",
                          f"output_dir={tmp_path}", "name=lr50"])
    out = capsys.readouterr().out
    assert code == 0
    collapse = json.loads((run_dir / "summary.json").read_text())["collapse"]
    assert collapse["collapsed"] is True and collapse["since_step"] <= 3 and collapse["rank"] < 2
    assert collapse["loss_gap"] == pytest.approx(0.0, abs=0.05)  # the loss sits near ln 33
    assert out.count("would stop the run (collapse.stop is off)") == 5  # warned up to the check that would stop it
    assert f"warning: the representation ended collapsed (since step {collapse['since_step']}" in out
    assert load_checkpoint(run_dir / "last.pth")["global_step"] == 8


def test_a_healthy_run_on_real_data_stays_quiet(tmp_path, capsys):
    run_dir = tmp_path / "healthy"
    assert pretrain.main(["--config", RECIPE, "--set", *TOY, "optim.steps=8", f"output_dir={tmp_path}",
                          "name=healthy"]) == 0
    out, err = capsys.readouterr()
    assert "collapsed" not in out + err
    lines = collapse_lines(run_dir)
    assert len(lines) == 8 and all(line["collapse/collapsed"] == 0.0 for line in lines)
    assert all(line["collapse/std_ratio"] > 0.2 and line["collapse/rank"] > 4 for line in lines)
    collapse = json.loads((run_dir / "summary.json").read_text())["collapse"]
    assert collapse["collapsed"] is False and collapse["since_step"] is None


def run_with_collapsed_checks(overrides: list[str], steps: set[int]) -> Trainer:
    """A trainer whose collapse signal after each step in `steps` is constant embeddings."""
    trainer = Trainer(load_config(RECIPE, overrides))
    real_step = trainer.train_step

    def step(batch):
        out = real_step(batch)
        if trainer.position.global_step + 1 in steps:  # the step being taken
            trainer.collapse_signal = CollapseSignal(torch.ones(16, 128))
        return out

    trainer.train_step = step
    return trainer


def test_a_collapsed_check_followed_by_healthy_ones_does_not_stop_the_run(tmp_path, capsys):
    overrides = [*TOY, SAVE_EACH_STEP, "optim.steps=8", f"output_dir={tmp_path}", "name=dip"]
    trainer = run_with_collapsed_checks(overrides, {2, 3, 4, 5})  # patience - 1 collapsed checks in a row
    summary = trainer.fit()
    assert summary["steps"] == 8 and summary["collapse"]["collapsed"] is False
    assert [line["collapse/collapsed"] for line in collapse_lines(tmp_path / "dip")] == [0, 1, 1, 1, 1, 0, 0, 0]
    assert capsys.readouterr().out.count("the representation looks collapsed") == 4
    assert trainer.state.last_good[1] == 8


def test_a_fifth_collapsed_check_in_a_row_stops_the_run(tmp_path):
    overrides = [*TOY, SAVE_EACH_STEP, "optim.steps=8", f"output_dir={tmp_path}", "name=stays"]
    trainer = run_with_collapsed_checks(overrides, {2, 3, 4, 5, 6})
    with pytest.raises(TrainingCollapsed, match=r"at step 6 \(epoch 2\): 5 checks in a row since step 2.*"
                                                r"Last good checkpoint: .*last\.pth \(step 1\)"):
        trainer.fit()


def test_the_study_report_names_the_runs_that_ended_collapsed(tmp_path):
    report_dir = tmp_path / "r"
    report_dir.mkdir()
    lines = [{"arm": arm, "seed": seed, "evaluator": "train",
              "metrics": {"train_seconds": 60.0, "collapsed": arm == "byol" and seed == 1,
                          "embedding_rank": 1.02 if arm == "byol" and seed == 1 else 40.0}}
             for arm in ("moco", "byol") for seed in (0, 1)]
    (report_dir / "results.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    text = write_report(report_dir, "demo", "moco").read_text()
    assert "Collapse monitor: 1 of 4 runs ended collapsed: byol seed 1." in text
    assert "| embedding rank |" in text and "| byol | 1 | 60 | 1.02 |" in text  # the per-seed table
    assert "embedding rank: RankMe" in text
    for line in lines:  # records from before the monitor: no column, and no note about one
        line["metrics"] = {"train_seconds": 60.0}
    (report_dir / "results.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert "embedding rank" not in write_report(report_dir, "demo", "moco").read_text()

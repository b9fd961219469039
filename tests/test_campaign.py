import contextlib
import importlib
import io
import json
import re
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import yaml
from test_study import FIXTURE, TINY, write_study

from mochi_hvs.config import ConfigError
from mochi_hvs.deadline import Outcome
from mochi_hvs.errors import Interrupted, UserError
from mochi_hvs.study.__main__ import main as study_main
from mochi_hvs.study.campaign import execute
from mochi_hvs.study.campaign.__main__ import build_parser as campaign_parser
from mochi_hvs.study.campaign.__main__ import main as campaign_main
from mochi_hvs.study.campaign.bundle import BUNDLE, read_bundle, write_bundle
from mochi_hvs.study.campaign.execute import bundle_files
from mochi_hvs.study.campaign.kinds import Overrides
from mochi_hvs.study.campaign.merge import merge_bundle
from mochi_hvs.study.campaign.plan import next_run, pending_runs
from mochi_hvs.study.campaign.recipe import load_campaign
from mochi_hvs.study.campaign.records import finished_lines, recorded
from mochi_hvs.study.recipe import load_study, relocated
from mochi_hvs.study.runner import PlannedRun
from mochi_hvs.train import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MOCO, MOCHI = str(CONFIGS / "moco_v2.yaml"), str(CONFIGS / "moco_mochi.yaml")
FORWARDS_PER_SECOND, MARGIN, OVERHEAD = 100.0, 1.5, 20.0


def write_campaign(tmp_path, **fields):
    campaign = {"name": "test", "margin": MARGIN,
                "cost": {"cpu": {"forwards_per_second": FORWARDS_PER_SECOND, "overhead_seconds": OVERHEAD}}, **fields}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign, sort_keys=False))
    return path


def line(arm, seed, evaluator, **metrics):
    return json.dumps({"arm": arm, "seed": seed, "evaluator": evaluator, "metrics": metrics or {"top1": 1.0}})


def expected_seconds(steps, batch, forwards_per_image):
    """The cost model worked by hand: MoCo-v2 trains 4 encoder forwards per image and step, the supervised
    reference 3."""
    return steps * batch * forwards_per_image / FORWARDS_PER_SECOND * MARGIN + OVERHEAD


# ------------------------------------------------------------------ campaign files

ENTRY = {"study": "study.yaml", "arms": ["moco"], "seeds": [0]}


@pytest.mark.parametrize("change, message", [
    ({"entries": [{**ENTRY, "arms": ["mocco"]}]}, "'entries[0].arms' 'mocco' is not a run of tiny (moco, hvs, "
                                                 "supervised)"),
    ({"entries": [{**ENTRY, "seeds": [5]}]}, "'entries[0].seeds' must list seeds of tiny ([0])"),
    ({"entries": [{**ENTRY, "seed": [0]}]}, "unknown key 'entries[0].seed' (did you mean 'entries[0].seeds'?)"),
    ({"entries": [{**ENTRY, "study": "missing.yaml"}]}, "'entries[0].study' must name a study file"),
    ({"entries": [ENTRY, ENTRY]}, "declare moco seed 0 of tiny twice"),
    ({"entrys": []}, "unknown key 'entrys' (did you mean 'entries'?)"),
    ({"margin": 0.5}, "'margin' must be at least 1"),
    ({"cost": {"gpu": {"forwards_per_second": 1}}}, "'cost.gpu' is not a device kind (cuda, cpu)"),
    ({"cost": {"cpu": {"forwards_per_second": 0}}}, "'cost.cpu' needs forwards_per_second > 0"),
])
def test_campaign_file_errors_name_the_key_and_the_file(tmp_path, change, message):
    write_study(tmp_path)
    path = write_campaign(tmp_path, **{"entries": [ENTRY], **change})
    with pytest.raises(ConfigError) as err:
        load_campaign(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_campaign_cli_reports_a_bad_file_in_one_line(tmp_path, capsys):
    write_study(tmp_path, references=["pixels"])  # no supervised reference to declare
    path = write_campaign(tmp_path, entries=[{**ENTRY, "arms": ["supervised"]}])
    assert campaign_main(["plan", "--campaign", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'supervised' is not a run of tiny (moco, hvs)" in err[0]


def test_shipped_campaign_runs_the_headline_table_first_then_each_seed_of_the_objectives_in_turn():
    campaign = load_campaign(CONFIGS / "campaigns" / "gpu.yaml")
    keys = [run.key for run in campaign.runs]
    assert keys[:7] == [("fmnist_headline", "long", 0), ("fmnist_headline", "long", 1),
                        ("fmnist_headline", "long", 2), ("fmnist_headline", "long_supervised", 0),
                        ("fmnist_headline", "vit_tiny", 0), ("fmnist_headline", "vit_tiny", 1),
                        ("fmnist_headline", "vit_tiny", 2)]
    objectives = [(seed, arm) for study, arm, seed in keys if study == "fmnist_objectives"]
    arms = set(campaign.studies["fmnist_objectives"].study.spec.arms)
    assert {arm for _, arm in objectives} == arms | {"supervised"}
    assert [seed for seed, _ in objectives] == sorted(seed for seed, _ in objectives)  # seed 0 of every arm first
    assert {seed for seed, arm in objectives if arm in arms} == {0, 1, 2}
    assert set(campaign.studies) == {"fmnist_headline", "fmnist_objectives", "fmnist_frontier", "compact_distill",
                                     "compact_dspnet", "compact_ssql", "compact_burn", "continual_fmnist_full",
                                     "video_moving_digits_gpu"}
    assert {name: study.kind for name, study in campaign.studies.items() if study.kind != "study"} == {
        "continual_fmnist_full": "continual", "video_moving_digits_gpu": "video"}
    assert {(arm, seed) for study, arm, seed in keys if study == "continual_fmnist_full"} == {
        (arm, seed) for arm in ("finetune", "cassle", "joint") for seed in (0, 1, 2)}
    assert {(arm, seed) for study, arm, seed in keys if study == "video_moving_digits_gpu"} == {
        (arm, seed) for arm in ("image_model", "random_init", "temporal", "distilled") for seed in (0, 1, 2)}
    assert campaign.studies["video_moving_digits_gpu"].recipe.device == "cuda"
    distill = [(seed, arm) for study, arm, seed in keys if study == "compact_distill"]
    for seed in (0, 1, 2):  # each distilled student right after the teacher whose checkpoint it reads
        assert distill.index((seed, "distilled")) == distill.index((seed, "teacher")) + 1
    burn = [(seed, arm) for study, arm, seed in keys if study == "compact_burn" and arm in ("teacher", "burn")]
    assert burn == [(seed, arm) for seed in (0, 1, 2) for arm in ("teacher", "burn")]  # BURN reads its teacher
    assert set(campaign.spec.cost) == {"cuda", "cpu"}



def test_the_gpu_checks_dry_run_sizes_leave_every_shipped_run_loadable(monkeypatch):
    """benchmarks/gpu_check.py --device cpu overrides every run of the shipped campaign with its tiny sizes: each
    config must still load (the ViT arm has no BatchNorm to split; the default's 8 splits need 8 samples each)."""
    monkeypatch.syspath_prepend(str(CONFIGS.parent / "benchmarks"))
    gpu_check = importlib.import_module("gpu_check")
    args = campaign_parser().parse_args(["run", "--budget", "1", *gpu_check.SIZES["cpu"].campaign_args])
    overrides = Overrides(tuple(args.set), tuple(args.evaluation_set), tuple(args.video_set)).on("cpu", None)
    campaign = load_campaign(CONFIGS / "campaigns" / "gpu.yaml", overrides)
    assert len(campaign.runs) == len(load_campaign(CONFIGS / "campaigns" / "gpu.yaml").runs)

# ------------------------------------------------------------------ planning

@pytest.mark.slow
def test_planner_skips_recorded_runs_continues_started_ones_first_and_estimates_by_forwards(tmp_path):
    study_path = write_study(tmp_path, seeds=[0, 1, 2], shared=[*TINY, "optim.steps=4"], evaluations=["knn"],
                             references=["supervised"], arms={"moco": {"recipe": MOCO}})
    entry = {"study": "study.yaml", "arms": ["moco", "supervised"], "seeds": [0, 1, 2]}
    campaign = load_campaign(write_campaign(tmp_path, entries=[entry]))
    study = load_study(study_path)
    results = tmp_path / "results" / "tiny" / "results.jsonl"
    results.parent.mkdir(parents=True)
    # moco seed 0 is recorded in full; seed 1 has its training line only (stopped before its evaluation)
    results.write_text("\n".join([line("moco", 0, "train"), line("moco", 0, "knn"), line("moco", 1, "train")]))
    # moco seed 2 stopped at step 2 of 4 (its checkpoint, no summary); supervised seed 0 finished training
    partial = PlannedRun(study, "moco", 2)
    Trainer(partial.config("optim.steps=2")).fit()
    (partial.run_dir / "summary.json").unlink()
    finished = tmp_path / "runs" / "tiny" / "supervised" / "seed0"
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text("{}")

    pending = pending_runs(campaign, campaign.spec.cost["cpu"])
    assert [p.declared.key for p in pending] == [("tiny", "supervised", 0), ("tiny", "moco", 2), ("tiny", "moco", 1),
                                                 ("tiny", "supervised", 1), ("tiny", "supervised", 2)]
    assert [(p.steps_done, p.evaluations_only) for p in pending] == [(4, True), (2, False), (0, False), (0, False),
                                                                     (0, False)]
    seconds = [OVERHEAD, expected_seconds(2, 16, 4), expected_seconds(4, 16, 4), expected_seconds(4, 16, 3),
               expected_seconds(4, 16, 3)]
    assert [p.seconds for p in pending] == pytest.approx(seconds)
    assert next_run(pending, OVERHEAD - 1) is None
    assert next_run(pending, OVERHEAD) is pending[0]
    # a run that does not fit is passed over for a later one that does
    assert next_run(pending[2:], expected_seconds(4, 16, 3)) is pending[3]


# ------------------------------------------------------------------ bundle and merge

def test_bundle_hands_on_new_lines_of_runs_recorded_in_full_and_nothing_of_a_stopped_run(tmp_path):
    write_study(tmp_path, seeds=[0, 1], evaluations=["knn"], references=["pixels"])
    campaign = load_campaign(write_campaign(tmp_path, entries=[{**ENTRY, "seeds": [0, 1]}]))
    study = campaign.studies["tiny"].study
    work = tmp_path / "work"
    there = relocated(study, work)
    own = [line("moco", 0, "train")]  # already merged from an earlier call
    new = [line("moco", 0, "knn"), line("pixels", None, "knn"), line("moco", 1, "train")]  # seed 1: no knn yet
    study.report_dir.mkdir(parents=True)
    (study.report_dir / "results.jsonl").write_text(own[0] + "\n")
    there.report_dir.mkdir(parents=True)
    (there.report_dir / "results.jsonl").write_text("\n".join(own + new) + "\n")
    for seed in (0, 1):
        folder = there.runs_dir / "moco" / f"seed{seed}"
        folder.mkdir(parents=True)
        for name in ("summary.json", "metrics.jsonl", "last.pth"):
            (folder / name).write_text(f"{name} of seed {seed}")

    files = bundle_files(campaign, work)
    assert files.pop("tiny/results.jsonl").decode().splitlines() == new[:2]
    assert files == {"tiny/runs/moco/seed0/summary.json": b"summary.json of seed 0",
                     "tiny/runs/moco/seed0/metrics.jsonl": b"metrics.jsonl of seed 0"}


def write_fixture_bundle(tmp_path, study_path, **manifest):
    files = {"tiny/results.jsonl": "".join(json.dumps(entry) + "\n" for entry in FIXTURE).encode(),
             "tiny/runs/moco/seed0/summary.json": b'{"steps": 100}\n'}
    path = tmp_path / "out" / BUNDLE
    path.parent.mkdir(exist_ok=True)
    write_bundle(path, {"studies": {"tiny": str(study_path)}, "overrides": [], **manifest}, files)
    return path


def test_merge_appends_each_line_once_copies_the_run_records_and_writes_the_report(tmp_path):
    study_path = write_study(tmp_path, arms={"moco": {"recipe": MOCO}, "mochi": {"recipe": MOCHI}},
                             seeds=[0, 1, 2], evaluations=["knn"], references=["pixels"])
    results = tmp_path / "results" / "tiny"
    results.mkdir(parents=True)
    (results / "results.jsonl").write_text(json.dumps(FIXTURE[0]) + "\n")  # one line is there already
    bundle = write_fixture_bundle(tmp_path, study_path)

    assert merge_bundle(bundle.parent) == [f"tiny: {len(FIXTURE) - 1} new result line(s) in {results}/results.jsonl,"
                                           " 1 run record(s) copied"]
    merged = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    assert merged == FIXTURE
    assert (results / "runs" / "moco" / "seed0" / "summary.json").read_text() == '{"steps": 100}\n'
    assert "| moco (baseline) | 3 |" in (results / "REPORT.md").read_text()
    assert set(yaml.safe_load((results / "study.yaml").read_text())["arms"]) == {"moco", "mochi"}

    assert merge_bundle(bundle)[0].startswith("tiny: 0 new result line(s)")  # a second merge adds nothing
    assert len((results / "results.jsonl").read_text().splitlines()) == len(FIXTURE)


def test_merge_refuses_a_dry_run_and_a_foreign_member_without_touching_the_results(tmp_path):
    study_path = write_study(tmp_path, arms={"moco": {"recipe": MOCO}, "mochi": {"recipe": MOCHI}},
                             seeds=[0, 1, 2], evaluations=["knn"], references=["pixels"])
    dry = write_fixture_bundle(tmp_path, study_path, overrides=["optim.steps=2"])
    with pytest.raises(UserError, match="made with overrides \\(optim.steps=2\\).*--with-overrides"):
        merge_bundle(dry)
    manifest, members = read_bundle(dry)
    write_bundle(dry, {**manifest, "overrides": []}, {**members, "tiny/runs/moco/seed0/last.pth": b"weights"})
    with pytest.raises(UserError, match="unexpected member tiny/runs/moco/seed0/last.pth"):
        merge_bundle(dry)
    assert not (tmp_path / "results" / "tiny" / "results.jsonl").exists()
    with pytest.raises(UserError, match="no campaign bundle at"):
        read_bundle(tmp_path / "nowhere")


def test_a_failed_run_is_passed_over_and_a_stopped_one_ends_the_call_with_nothing_handed_on(tmp_path, monkeypatch):
    write_study(tmp_path, seeds=[0, 1, 2], evaluations=["knn"], references=[])
    path = write_campaign(tmp_path, entries=[{**ENTRY, "seeds": [0, 1, 2]}])
    work, out = tmp_path / "work", tmp_path / "out"
    commands = []

    def fake_run(command, cwd, env, seconds):
        """Each run records its training line in the work folder, then the first fails, the second is stopped."""
        commands.append(command)
        seed = int(command[command.index("--seeds") + 1])
        (work / "results" / "tiny").mkdir(parents=True, exist_ok=True)
        with open(work / "results" / "tiny" / "results.jsonl", "a") as results:
            results.write(line("moco", seed, "train") + "\n")
        return Outcome(3 if seed == 0 else None, "", 1.0)

    monkeypatch.setattr(execute, "run_until", fake_run)
    events = execute.run_campaign(path, "cpu", out, 600, work, emit=lambda event: None)
    assert [(e["event"], e.get("seed"), e.get("status")) for e in events] == [
        ("run", 0, "failed (exit 3)"), ("run", 1, "stopped at the deadline"), ("end", None, None)]
    assert events[-1]["reason"].startswith("the deadline stopped the last run")
    assert all(c[c.index("--into") + 1] == str(work) and c[c.index("--set") + 1] == "device=cpu" for c in commands)
    manifest, files = read_bundle(out)
    assert files == {} and manifest["events"] == events  # neither run's training line looks finished

    def stopped_by_a_signal(*_):
        raise Interrupted("SIGTERM")

    monkeypatch.setattr(execute, "run_until", stopped_by_a_signal)
    events = execute.run_campaign(path, "cpu", out, 600, work, emit=lambda event: None)
    assert [e["event"] for e in events] == ["end"] and events[0]["reason"].startswith("stopped by a signal")
    assert read_bundle(out)[0]["events"] == events


# ------------------------------------------------------------------ the whole path, on the CPU

def study_in_this_process(command, cwd, env, seconds):
    """run_until for a `python -m mochi_hvs.study ARGS` command, called in this process with its arguments as
    sys.argv (what the records name) and its output kept apart."""
    start = time.monotonic()
    args = command[command.index("mochi_hvs.study") + 1:]
    with mock.patch.object(sys, "argv", ["study", *args]), contextlib.redirect_stdout(io.StringIO()) as output:
        code = study_main(args)
    return Outcome(code, output.getvalue(), time.monotonic() - start)


@pytest.mark.slow
def test_dry_run_calls_continue_the_campaign_and_merging_twice_adds_nothing(tmp_path, capsys, monkeypatch):
    """Two declared runs whose estimates (the cost model at 1 forward per second) fit one call each: the first call
    runs one; on a fresh machine (a new work folder) its merged records make the second call run the other; a third
    call finds nothing pending."""
    write_study(tmp_path, evaluations=["knn", "linear"], references=[],
                arms={"short": {"recipe": MOCO, "set": ["optim.steps=2"]},
                      "longer": {"recipe": MOCO, "set": ["optim.steps=4"]}}, baseline="short", shared=TINY)
    path = write_campaign(tmp_path, entries=[{"study": "study.yaml", "arms": ["short", "longer"], "seeds": [0]}],
                          margin=1.0, cost={"cpu": {"forwards_per_second": 1, "overhead_seconds": 0}})
    out = tmp_path / "out"
    results = tmp_path / "results" / "tiny" / "results.jsonl"

    def call(budget, work):
        assert campaign_main(["run", "--campaign", str(path), "--device", "cpu", "--out", str(out), "--work",
                              str(tmp_path / work), "--budget", str(budget), "--set", "log_every=1",
                              "--evaluation-set", "eval.knn_k=[5]"]) == 0
        return [json.loads(text) for text in capsys.readouterr().out.splitlines()]

    def merge(*options):
        code = campaign_main(["merge", str(out), *options])
        capsys.readouterr()
        return code

    first = call(2 * 16 * 4 + 120, "machine1")  # short's 128 forwards fit, longer's 256 do not
    assert [(e["event"], e.get("arm"), e.get("status")) for e in first] == [("run", "short", "ok"),
                                                                          ("end", None, None)]
    assert first[-1]["reason"] == "no pending run fits: tiny longer seed 0 needs 256 s"
    assert merge() == 2  # a dry run's bundle is refused by default
    assert merge("--with-overrides") == 0
    keys = [(r["arm"], r["evaluator"]) for r in map(json.loads, results.read_text().splitlines())]
    assert keys == [("short", "train"), ("short", "knn"), ("short", "linear")]

    # The first call ran its study in a process of its own, as the campaign does; the second runs it in this one
    # (without the figures, which the first drew), to spare a second start of Python and torch.
    monkeypatch.setattr(execute, "run_until", study_in_this_process)
    monkeypatch.setattr("mochi_hvs.study.__main__.write_plots", lambda folder, baseline: [])
    second = call(4 * 16 * 4 + 120, "machine2")
    assert [(e["event"], e.get("arm"), e.get("status")) for e in second] == [("run", "longer", "ok"),
                                                                           ("end", None, None)]
    assert merge("--with-overrides") == 0 and merge("--with-overrides") == 0
    lines = [json.loads(text) for text in results.read_text().splitlines()]
    assert sorted((r["arm"], r["evaluator"]) for r in lines) == sorted(
        (arm, evaluator) for arm in ("short", "longer") for evaluator in ("train", "knn", "linear"))
    assert {r["metrics"]["steps"] for r in lines if r["evaluator"] == "train"} == {2, 4}
    assert all("--into" in r["command"] and set(r["metrics"]) == {"k5_top1", "k5_top5"}
               for r in lines if r["evaluator"] == "knn")  # the evaluation override reached the runs
    assert (tmp_path / "results" / "tiny" / "runs" / "longer" / "seed0" / "summary.json").is_file()
    assert (tmp_path / "results" / "tiny" / "REPORT.md").is_file()

    third = call(60, "machine2")
    assert [(e["event"], e["pending"], e["reason"]) for e in third] == [("end", 0, "no pending run left to try")]
    manifest, files = read_bundle(out)
    assert files == {} and manifest["overrides"] == ["log_every=1"]


# ------------------------------------------------------------------ continual and video studies as entries

CONTINUAL_SHARED = ["model.arch=timm/resnet18", "model.arch_kwargs={channels: [8, 16, 32, 64], stem_width: 8}",
                    "model.bn_splits=1", "model.head_hidden_dim=32", "continual.predictor_hidden=16",
                    "optim.batch_size=16", "moco.queue_size=64", "continual.split=2", "continual.steps_per_task=3",
                    "log_every=1", "eval.knn_k=5", "eval.knn_train_subset=40", "eval.knn_test_subset=20",
                    "eval.knn_baseline=false", "eval.knn_pixels=false", "eval.linear.l2_grid=[0.1]"]


def write_continual_study(tmp_path):
    """Two class-incremental tasks of 3 steps of 16 with a tiny ResNet; sequential fine-tuning and CaSSLe."""
    recipe = str(CONFIGS / "continual" / "fmnist_classes.yaml")
    study = {"name": "tiny_continual", "seeds": [0, 1], "baseline": "finetune", "shared": CONTINUAL_SHARED,
             "arms": {"finetune": {"recipe": recipe, "set": ["continual.distill=false"]}, "cassle": {"recipe": recipe}},
             "references": [], "output_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results")}
    (tmp_path / "continual.yaml").write_text(yaml.safe_dump(study, sort_keys=False))


def write_video_recipe(tmp_path, image_model):
    """Random labelled videos of 10 frames at 16 px in frames folders, and a recipe of 2 steps of 4 videos."""
    from test_video import labelled_clips

    from mochi_hvs.video.clips import write_frames_folder

    for split, count in (("train", 16), ("test", 8)):
        write_frames_folder(labelled_clips(count, seed=len(split)), tmp_path / "clips" / split)
    (tmp_path / "video.yaml").write_text(
        f"name: tiny_video\nimage_model: {image_model}\nseeds: [0, 1]\n"
        f"data: {{train: {tmp_path / 'clips' / 'train'}, test: {tmp_path / 'clips' / 'test'}, frames: 4}}\n"
        "train: {width: 4, steps: 2, batch_size: 4}\n")


def continual_line(arm, seed, after_task, task, evaluator):
    return json.dumps({"arm": arm, "seed": seed, "after_task": after_task, "task": task, "evaluator": evaluator})


def test_entries_name_their_kind_and_are_checked_against_it(tmp_path):
    write_continual_study(tmp_path)
    write_video_recipe(tmp_path, "weights.safetensors")  # the image model is read when a run starts, not here
    for entry, message in [({"kind": "vidoe", "study": "video.yaml", "arms": ["temporal"], "seeds": [0]},
                            "'entries[0].kind' must be one of study, continual, video; got 'vidoe'"),
                           ({"kind": "video", "study": "video.yaml", "arms": ["supervised"], "seeds": [0]},
                            "'supervised' is not a run of tiny_video (image_model, random_init, temporal, distilled)"),
                           ({"kind": "continual", "study": "continual.yaml", "arms": ["joint"], "seeds": [0]},
                            "'joint' is not a run of tiny_continual (finetune, cassle)"),
                           ({"study": "video.yaml", "arms": ["temporal"], "seeds": [0]}, "unknown key 'image_model'")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_campaign(write_campaign(tmp_path, entries=[entry]))


def test_continual_and_video_runs_are_pending_until_recorded_in_full_and_estimated_by_forwards(tmp_path):
    write_continual_study(tmp_path)
    write_video_recipe(tmp_path, "weights.safetensors")
    path = write_campaign(tmp_path, entries=[
        {"kind": "continual", "study": "continual.yaml", "arms": ["finetune", "cassle"], "seeds": [0, 1]},
        {"kind": "video", "study": "video.yaml", "arms": ["temporal", "image_model"], "seeds": [0]}])
    campaign = load_campaign(path)
    results = tmp_path / "results" / "tiny_continual" / "results.jsonl"
    results.parent.mkdir(parents=True)
    cells = [(-1, -1, "train"), *((i, j, e) for i in (0, 1) for j in range(i + 1) for e in ("linear", "knn"))]
    full = [continual_line("finetune", 0, *cell) for cell in cells]  # recorded in full
    stopped = [continual_line("cassle", 0, *cell) for cell in cells[:-1]]  # its last evaluation missing
    results.write_text("\n".join(full + stopped) + "\n")
    video = tmp_path / "results" / "tiny_video" / "results.jsonl"
    video.parent.mkdir(parents=True)
    video.write_text(json.dumps({"arm": "temporal", "seed": 0, "task": "content"}) + "\n")  # motion missing

    pending = pending_runs(campaign, campaign.spec.cost["cpu"])
    assert [p.declared.key for p in pending] == [
        ("tiny_continual", "cassle", 0), ("tiny_continual", "finetune", 1), ("tiny_continual", "cassle", 1),
        ("tiny_video", "temporal", 0), ("tiny_video", "image_model", 0)]
    # MoCo-v2: 4 forwards per image and step; CaSSLe's second task adds the frozen encoder's forward of the query
    seconds = [(3 * 16 * 4 + 3 * 16 * 5) / FORWARDS_PER_SECOND * MARGIN + OVERHEAD, expected_seconds(6, 16, 4),
               (3 * 16 * 4 + 3 * 16 * 5) / FORWARDS_PER_SECOND * MARGIN + OVERHEAD,
               2 * 4 * 2 * 4 * 3 / FORWARDS_PER_SECOND * MARGIN + OVERHEAD,  # steps x videos x clips x frames x 3
               OVERHEAD]  # the image model alone: its probes only
    assert [p.seconds for p in pending] == pytest.approx(seconds)
    assert [(p.steps, p.steps_done) for p in pending] == [(6, 0), (6, 0), (6, 0), (2, 0), (0, 0)]
    study = campaign.studies["tiny_continual"]
    assert finished_lines(full + stopped, recorded(study, results), study) == full  # the stopped run hands on none


@pytest.mark.slow
def test_dry_run_executes_a_continual_and_a_video_entry_and_merges_their_records(tmp_path, capsys, monkeypatch):
    """One call runs one continual run and one video arm end to end (their own commands, in the work folder), its
    bundle merges their lines and reports, and the next call finds nothing pending. About 25 s on one thread."""
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    write_continual_study(tmp_path)
    write_video_recipe(tmp_path, tmp_path / "resnet18.pth")
    path = write_campaign(tmp_path, cost={"cpu": {"forwards_per_second": 1000, "overhead_seconds": 1}}, entries=[
        {"kind": "continual", "study": "continual.yaml", "arms": ["cassle"], "seeds": [0]},
        {"kind": "video", "study": "video.yaml", "arms": ["distilled"], "seeds": [0]}])
    monkeypatch.chdir(tmp_path)  # the video study's results are relative to the current folder

    def call():
        assert campaign_main(["run", "--campaign", str(path), "--device", "cpu", "--out", str(tmp_path / "out"),
                              "--work", str(tmp_path / "work"), "--budget", "600", "--evaluation-set",
                              "eval.knn_test_subset=10", "--video-set", "train.steps=1"]) == 0
        return [json.loads(text) for text in capsys.readouterr().out.splitlines()]

    events = call()
    assert [(e["event"], e.get("study"), e.get("arm"), e.get("status")) for e in events] == [
        ("run", "tiny_continual", "cassle", "ok"), ("run", "tiny_video", "distilled", "ok"), ("end", None, None, None)]
    log = (tmp_path / "out" / "campaign.log").read_text()
    assert "-m mochi_hvs.continual --config" in log and "-m mochi_hvs.video --config" in log
    manifest, files = read_bundle(tmp_path / "out")
    assert manifest["kinds"] == {"tiny_continual": "continual", "tiny_video": "video"}
    assert manifest["video_overrides"] == ["train.steps=1"] and set(files) == {"tiny_continual/results.jsonl",
                                                                                "tiny_video/results.jsonl"}
    assert campaign_main(["merge", str(tmp_path / "out"), "--with-overrides"]) == 0
    capsys.readouterr()

    continual = [json.loads(text) for text in (tmp_path / "results/tiny_continual/results.jsonl").read_text()
                 .splitlines()]
    assert sorted((r["after_task"], r["task"], r["evaluator"]) for r in continual) == sorted(
        [(-1, -1, "train"), *((i, j, e) for i in (0, 1) for j in range(i + 1) for e in ("linear", "knn"))])
    assert all(r["arm"] == "cassle" and "--into" in r["command"] for r in continual)
    assert "## converged linear probe" in (tmp_path / "results/tiny_continual/REPORT.md").read_text()
    video = [json.loads(text) for text in (tmp_path / "results/tiny_video/results.jsonl").read_text().splitlines()]
    assert [(r["arm"], r["task"], r["train"]["steps"]) for r in video] == [("distilled", "content", 1),
                                                                           ("distilled", "motion", 1)]
    assert "distilled" in (tmp_path / "results/tiny_video/REPORT.md").read_text()

    again = call()  # a fresh work folder would plan from the merged records; this one holds them too
    assert [(e["event"], e["reason"]) for e in again] == [("end", "no pending run left to try")]

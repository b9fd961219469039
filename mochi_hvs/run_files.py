"""The files of a run folder, runs/<name>/ (checkpoints, logs, results, lock)."""

LAST = "last.pth"  # the rolling checkpoint
TASK = "task{}.pth"  # a continual run's checkpoint as task {index} ended (config/continual.py), kept
SUMMARY = "summary.json"  # written when a run (or stage) has finished, with its final figures
METRICS = "metrics.jsonl"  # one JSON line per logged step and evaluation
LOCK = "run.lock"  # held by the process writing the folder

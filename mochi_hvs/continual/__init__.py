"""Continual pretraining's measurement: the accuracy matrix over a task sequence (matrix.py), each task checkpoint
evaluated on every task seen so far (evaluation.py), and the study that runs and reports it (runner.py, report.py;
`python -m mochi_hvs.continual`)."""

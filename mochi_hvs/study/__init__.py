"""Seeded comparisons of pretraining recipes: arms x seeds, evaluated alike, with statistics and plots.

`python -m mochi_hvs.study --config configs/studies/NAME.yaml` runs (or continues) a study;
`--report` only regenerates results/<study>/REPORT.md and its figures.
"""

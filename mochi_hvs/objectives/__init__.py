"""Training objectives: what one step optimises (MoCo-v2's InfoNCE against a queue, the supervised reference, BYOL,
TWIST).

Each objective is one module here with an `Objective` subclass registered under its `objective:` name
(registry.py). It declares what it needs (registry.Needs) and, where it has settings, its config section; the
builder, the config loader, the compute model and the reports read those declarations and never its name.

catalogue.py imports the modules, and `mochi_hvs/__init__.py` imports it, so that every objective and its config
section are registered before any config is read. This package's own import loads none of them: config.py reads
the registry without importing a step (which imports config.py).
"""

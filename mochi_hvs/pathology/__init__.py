"""The pathology recipe's demonstration on scikit-image's bundled IHC image: its data (ihc.py), the comparison it runs
(demo.py) and the report made from its records (report.py)."""

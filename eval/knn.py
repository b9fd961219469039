"""Weighted kNN top-1/top-5 of a backbone: `python eval/knn.py --checkpoint FILE [--config F] [--set k=v ...]`.

k values, temperature, search backend, fp16 bank and subsets are config keys: --set eval.knn_k=[20,200]
eval.knn_temperature=0.07 eval.knn_backend=faiss eval.knn_fp16=true eval.knn_train_subset=null.
"""

import sys

from mochi_hvs.evaluation.cli import base_parser, run_evaluation
from mochi_hvs.evaluation.knn import KnnMonitor


def evaluate(ctx):
    """kNN results for every configured k."""
    monitor = KnnMonitor(ctx.cfg, ctx.device, ctx.amp_dtype)
    metrics = {}
    for result in monitor.evaluate_all(ctx.backbone):
        metrics[f"k{result.k}_top1"] = result.top1
        metrics[f"k{result.k}_top5"] = result.top5
    e = ctx.cfg.eval
    settings = {"k": monitor.ks, "temperature": e.knn_temperature, "backend": e.knn_backend, "fp16": e.knn_fp16,
                "train_subset": e.knn_train_subset, "test_subset": e.knn_test_subset}
    return settings, metrics


def main(argv=None) -> int:
    """Parse, evaluate, report."""
    args = base_parser("eval/knn.py", __doc__.splitlines()[0]).parse_args(argv)
    return run_evaluation("knn", args, evaluate)


if __name__ == "__main__":
    sys.exit(main())

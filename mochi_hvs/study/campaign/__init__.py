"""The GPU campaign: declared study runs done a call at a time on a lent GPU, their records merged back here.

configs/campaigns/gpu.yaml lists (study, arm, seed) runs in priority order with a cost model; each GPU call runs
the pending ones that fit (benchmarks/gpu_check.sh does, as its last phase) and leaves one bundle in its output
folder; `python -m mochi_hvs.study.campaign merge BUNDLE` adds its records to results/<study>/ and regenerates the
reports, so the next call continues where this one stopped (docs/gpu-campaign.md).
"""

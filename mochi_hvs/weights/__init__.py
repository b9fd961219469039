"""Weights on disk: every file the toolkit writes or reads back, one module per format or concern.

- checkpoint.py: our training checkpoints (layout, digest, resume), RNG state capture;
- loader.py: backbone weights from any supported file, under the backbone's own names (init_from, evaluators,
  export, hubconf.py), and the one line that says what was found, ignored and checked;
- layouts.py: where the state dict and the backbone sit in a file (containers, key prefixes);
- architecture.py: which backbone a file holds (its run config's model.arch, or a ResNet inferred);
- export.py: the `mochi-export` command (safetensors, torchvision, detectron2, timm and ONNX for other tools);
- safetensors_format.py: safetensors files, ours marked and digested in their metadata;
- detectron2_format.py: the detectron2 layout of a ResNet backbone, both ways;
- timm_format.py: the timm folder in the Hugging Face layout; model_card.py and run_records.py: its README.md;
- onnx_format.py: the ONNX graph, checked in onnxruntime;
- hub.py: the torch.hub entry point of hubconf.py;
- reading.py: what a file holds, read by content without running code;
- safe_pickle.py: plain pickles of containers and numpy arrays (detectron2 files), nothing else;
- integrity.py: SHA-256 digests inside checkpoints and `sha256sum` sidecars beside exports;
- atomic.py: atomic, durable writes and a full disk reported in one line;
- resume_changes.py: what a resume may change in the config;
- errors.py: the errors a weights file can raise.
"""

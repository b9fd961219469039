"""Video self-supervised learning on clips: frames folders, generated moving-object clips, a small (2+1)D encoder
trained with a temporal contrastive objective plus distillation from a frozen image backbone, and its probes
(docs/methods/video.md)."""

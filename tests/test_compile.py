"""`compile: true` trains the same step as eager mode. TorchDynamo captures the encoders and AOTAutograd
functionalises and decomposes their forward and backward (the `aot_eager` backend: everything torch.compile
does before code generation, which would take minutes on a CPU); split BatchNorm runs on channels_last, through
its fused formulation."""

import torch
from conftest import tiny_settings
from torch._dynamo.backends.registry import lookup_backend

from mochi_hvs.config import load_config
from mochi_hvs.train import Trainer


def two_steps(overrides: list[str]) -> tuple[list[float], list[torch.Tensor]]:
    trainer = Trainer(load_config(None, overrides))
    batches = iter(trainer.parts.batches)
    losses = [float(trainer.train_step(next(batches))["loss"]) for _ in range(2)]
    weights = [p.detach().clone() for p in trainer.model.encoder_q.parameters()]
    trainer.close()
    return losses, weights


def test_a_compiled_step_equals_the_eager_one(tmp_path, monkeypatch):
    graphs = []
    aot_eager = lookup_backend("aot_eager")

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return aot_eager(graph, example_inputs)

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend=counting_backend))
    common = ["channels_last=true", "model.bn_splits=2"]
    eager_losses, eager_weights = two_steps(tiny_settings(tmp_path / "eager") + common + ["compile=false"])
    compiled_losses, compiled_weights = two_steps(tiny_settings(tmp_path / "compiled") + common + ["compile=true"])
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-4, atol=1e-5)
    for compiled, eager in zip(compiled_weights, eager_weights, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-4)
    assert graphs, "the encoders ran through TorchDynamo"

"""The names model.arch takes: the project's ResNets (resnet18 | resnet34 | resnet50, with model.small_stem), the same
at a width multiplier (`scaled/<resnet>`, models/scaled_resnet.py) and any image model of timm (`timm/<name>`, one of
timm.list_models()) or torchvision (`torchvision/<name>`, one of its classification models), checked against the
library's own list; and the compact forms of them: `quantized/<arch>` (any of those, its convolutions and linear layers
fake-quantized, models/fake_quant.py) and `binary/resnet18` | `binary/resnet34` (binary residual blocks,
models/binary.py). Torch-free until a library name is checked."""

from __future__ import annotations

import difflib

RESNETS = ("resnet18", "resnet34", "resnet50")
LIBRARIES = ("timm", "torchvision", "scaled")
QUANTIZED, BINARY = "quantized", "binary"  # the compact forms' prefixes
BINARY_RESNETS = ("resnet18", "resnet34")  # the ResNets of BasicBlocks, which have a binary form
FORMS = ("must be resnet18, resnet34, resnet50, timm/<name> (a model of timm.list_models()), scaled/<resnet18|resnet34|"
         "resnet50> (at model.arch_kwargs' width) or torchvision/<name> (a model of "
         "torchvision.models.list_models(torchvision.models)), or quantized/<one of those> or binary/resnet18|resnet34")


def library_and_name(arch: str) -> tuple[str | None, str]:
    """('timm', name) for `timm/<name>`, ('torchvision', name) and ('scaled', name) likewise; (None, arch) for the
    project's ResNets."""
    library, slash, name = arch.partition("/")
    return (library, name) if slash else (None, arch)


def library_models(library: str) -> list[str]:
    """The image models a library builds by name: timm's registry, torchvision's classification models, the project's
    ResNets at a width."""
    if library == "scaled":
        return list(RESNETS)
    if library == "timm":
        import timm

        return timm.list_models()
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def arch_problem(arch: str) -> str | None:
    """None for a name model.arch accepts; else the accepted forms, what was given and the closest accepted name."""
    library, name = library_and_name(arch)
    if library == QUANTIZED:
        if library_and_name(name)[0] in (QUANTIZED, BINARY):
            return f"{FORMS}; got {arch!r} (quantized/ wraps one of the uncompressed forms)"
        inner = arch_problem(name)
        return None if inner is None else inner.replace(repr(name), repr(arch)).replace(
            "did you mean '", f"did you mean '{QUANTIZED}/")
    if library == BINARY:
        if name in BINARY_RESNETS:
            return None
        close = difflib.get_close_matches(name, BINARY_RESNETS, n=1) if name not in RESNETS else []
        hint = f"did you mean 'binary/{close[0]}'?" if close else "binary blocks replace BasicBlocks, which " \
            f"{'|'.join(BINARY_RESNETS)} have"
        return f"{FORMS}; got {arch!r} ({hint})"
    if library is None and name in RESNETS:
        return None
    if library in LIBRARIES:
        known = library_models(library)
        if name in known:
            return None
        close = [f"{library}/{match}" for match in difflib.get_close_matches(name, known, n=1)]
    elif library is None:  # a bare name: a ResNet misspelt, or a library model without its prefix
        close = difflib.get_close_matches(name, RESNETS, n=1) or [
            f"{lib}/{name}" for lib in LIBRARIES if name in library_models(lib)][:1]
    else:
        close = [f"{lib}/{name}" for lib in LIBRARIES if name in library_models(lib)][:1]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{FORMS}; got {arch!r}{hint}"

"""The models shipped inside cupre, and how what a user types names a model.

cupre's package holds a model (:data:`SHIPPED`): ``nuclei``, a detector trained on the
CC0 BBBC038 nuclei (its card, ``presets/models/nuclei.md``, says on what and how
well). It is read from the installed package, never downloaded, so cupre segments
nuclei offline from the first command.

Every command that takes a model (``cupre predict --model``, ``cupre export``,
``cupre finetune --from-model``, ``cupre train --init``, the napari widgets) turns what
was typed into a model file with :func:`resolve_model`: a shipped model's name, a model
file, or a run folder holding one. A name is a name: a file or folder that happens to be
called ``nuclei`` is written ``./nuclei``. This module imports no torch.
"""

from __future__ import annotations

from pathlib import Path

from cupre.errors import CupreError

PACKAGE = Path(__file__).resolve().parent
# name -> the model file, relative to the package (the digest beside it: same stem, .sha256)
SHIPPED: dict[str, str] = {"nuclei": "presets/models/nuclei.safetensors"}
DEFAULT_MODEL = "nuclei"  # what `cupre predict` segments with when no model is given
# Where `cupre train` starts (cupre.experiments.workflow): "cupre", the CUPre path (COCO stage and
# AMT2 on your images, then fine-tuning), or a shipped model, fine-tuned with no pre-training.
TRAIN_INITS = ("cupre", *SHIPPED)
TRAIN_INIT = "cupre"  # `cupre train`'s start unless its preset names one (the CPU preset: nuclei, docs/benchmarks.md)
LEGACY_SUFFIX = ".pt"  # a pickled model file of cupre < 0.2 (refused when read, with how to convert it)
RUN_CONFIG = "config.yaml"  # every cupre run folder holds its resolved config (cupre.train.run.Run)


def shipped_path(name: str) -> Path:
    """Where the shipped model ``name`` lies in this install (whether or not it is there)."""
    if name not in SHIPPED:
        raise CupreError(f"{name!r} is not a model shipped with cupre (shipped: {', '.join(SHIPPED)})")
    return PACKAGE / SHIPPED[name]


def shipped_model(name: str) -> Path:
    """The model file of the shipped model ``name``.

    Raises:
        CupreError: ``name`` is not shipped, or its file is missing from this install.
    """
    path = shipped_path(name)
    if not path.is_file():
        raise CupreError(f"the shipped {name} model is not in this install ({path} missing)")
    return path


def available() -> list[str]:
    """The shipped models whose file this install holds, in :data:`SHIPPED`'s order."""
    return [name for name in SHIPPED if shipped_path(name).is_file()]


def is_shipped_name(model: str | Path) -> bool:
    """Whether ``model`` names a shipped model: a string equal to a name of :data:`SHIPPED`
    (a :class:`~pathlib.Path` is always a path)."""
    return isinstance(model, str) and model in SHIPPED


def resolve_model(model: str | Path) -> Path:
    """What a user typed -> the model file: a shipped model's name (a string, see
    :func:`is_shipped_name`), a model file, or a run folder holding one (a ``cupre
    finetune`` run's ``model.safetensors``, a ``cupre train`` run's fine-tuned or
    self-trained model: :func:`cupre.modelfile.resolve_model_file`).

    Raises:
        CupreError: one line naming what was typed and the problem.
    """
    if is_shipped_name(model):
        return shipped_model(str(model))
    from cupre.modelfile import resolve_model_file  # torch: only once a model is really read

    return resolve_model_file(model)


def is_model_argument(text: str | Path) -> bool:
    """Whether the first of ``cupre predict``'s positional arguments names the model (the
    form ``cupre predict MODEL IMAGES...``) rather than an image: a file or path ending in
    ``.safetensors`` (or ``.pt``, a cupre < 0.2 model file), or a run folder: a folder
    holding ``model.safetensors``, a ``cupre train`` run's model, or a cupre run's
    ``config.yaml`` (a run without a model yet: reading it says so). A folder of images
    holds none of these, so it is never taken for a model; a shipped name is not taken
    here (``--model nuclei`` names it).
    """
    from cupre.modelfile import MODEL_FILE, TRAIN_RUN_MODELS

    path = Path(text)
    if path.suffix.lower() in (".safetensors", LEGACY_SUFFIX) and not path.is_dir():
        return True
    if not path.is_dir():
        return False
    inside = (MODEL_FILE, *(f"{sub}/{MODEL_FILE}" for sub in TRAIN_RUN_MODELS), RUN_CONFIG)
    return any((path / name).is_file() for name in inside)

"""``cupre export MODEL --format bioimageio``: a bioimage.io model package (spec 0.5).

The package (a zip: ``rdf.yaml``, weights, test tensors, cover, documentation) runs the
whole of ``cupre predict`` on one grey image: raw intensities ``B x 1 x Y x X`` in, the
instance label image ``B x 1 x Y x X`` (int32) out, the form deepImageJ, QuPath and the
bioimage.io tools consume. Its weights are a ``pytorch_state_dict`` (plain tensors) for
:class:`cupre.export.label_model.LabelImageModel`, built from the package's ``kwargs``
(the detector config and the prediction options), so the consumer needs cupre installed
(``pip install cupre``), as for any library architecture. Its test input is the image
given (``--sample``) or a synthetic cell image, and its test output what cupre predicts
for it, so bioimage.io's own test run checks the package reproduces cupre.

The package carries a second weights entry, ``torchscript``: the same inference scripted
(:mod:`cupre.export.torchscript`), which runs without cupre wherever torchvision's
operators (NMS, RoIAlign) are registered (Python with torchvision; not bare libtorch). Its output equals the state dict's for images that fit one tile at the
model's object scale (larger ones run in one piece instead of tiles); bioimage.io's test
run checks both against the same test output. ONNX weights are not included: the ONNX
export (:mod:`cupre.export.onnx`) is the detector network, not the label image.

Needs ``bioimageio.spec`` (``pip install 'cupre[export]'``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import torch

from cupre.errors import CupreError
from cupre.export.sample import sample_fits, sample_image
from cupre.inference.options import DEFAULTS, DetectionOptions

PAPER = ("Liao W., Li X., Wang Q., Xu Y., Yin Z., Xiong H. CUPre: Cross-domain Unsupervised Pre-training for "
         "Few-Shot Cell Segmentation. arXiv:2310.03981, 2023.")
PAPER_DOI = "10.48550/arXiv.2310.03981"
# Smallest input side: at the smallest object-scale factor (1/4) the detector still sees 64 px, so its
# coarsest level (stride 32) is 2x2 and a GroupNorm of one channel per group (narrow models) has 4 values.
MIN_SIDE = 256


def check_available() -> None:
    if importlib.util.find_spec("bioimageio") is None or importlib.util.find_spec("bioimageio.spec") is None:
        raise CupreError("--format bioimageio needs bioimageio.spec: pip install 'cupre[export]'")


def documentation(name: str, kwargs: dict, training: dict) -> str:
    facts = "\n".join(f"- {k}: {v}" for k, v in training.items()) or "- (not recorded in the model file)"
    return f"""# {name}

A cell instance-segmentation model trained with [cupre](https://arxiv.org/abs/2310.03981)
(Mask R-CNN, CUPre pre-training, few-shot fine-tuning).

**Input** `raw`: one grey image, `batch x 1 x y x x`, raw intensities of any range (the
model normalises each image by its 1st and 99.8th percentiles).

**Output** `labels`: the instance label image, `batch x 1 x y x x`, int32: 0 is background,
each cell one id, id 1 the highest-scoring; where masks overlap the higher score wins.

**Prediction options**: score threshold {kwargs['score_threshold']}, cell diameter
{kwargs['diameter'] or 'estimated per image'}, tiles of {kwargs['tile_size']} px
overlapping by {kwargs['tile_overlap']} px.

**Backbone / detector**: {kwargs['detector'].get('backbone')} with a
{kwargs['detector'].get('fpn_channels')}-channel FPN, {kwargs['detector'].get('arch', 'maskrcnn')} heads.

**Training facts** (from the model file):
{facts}

**Running it** needs the `cupre` Python package (the architecture is
`cupre.export.label_model.LabelImageModel`); `cupre predict` gives the same label images
plus an object table, ImageJ ROIs, GeoJSON and OME-Zarr.

**Cite**: {PAPER}
"""


def export_bioimageio(model_file: Path, out: Path, *, sample: Path | None = None,
                      options: DetectionOptions = DEFAULTS, name: str | None = None,
                      author: str = "cupre user") -> Path:
    """Write the package ``out`` (a ``.zip``); returns it.

    Raises:
        CupreError: bioimageio.spec missing, or the model file unreadable.
    """
    check_available()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as spec

    from cupre.data.imageio import normalize
    from cupre.export.label_model import LabelImageModel
    from cupre.export.torchscript import checked_script
    from cupre.inference import writers
    from cupre.inference.arrays import segment_array
    from cupre.inference.predict import DEFAULT_CATEGORIES
    from cupre.modelfile import load_model_file

    ckpt = load_model_file(model_file)
    options = options.with_own_threshold(ckpt.get("score_threshold"))  # written into the package
    kwargs = {"detector": dict(ckpt["detector"]), **dataclasses.asdict(options),
              "categories": list(ckpt.get("categories") or DEFAULT_CATEGORIES)}
    module = LabelImageModel(**kwargs)
    module.net.load_state_dict(ckpt["model"])
    raw = sample_image(sample)
    # what LabelImageModel.forward returns for the sample, with the object table for the cover
    with sample_fits(sample, raw):
        plane, rows, _ = segment_array(module.net.eval(), raw, device=torch.device("cpu"),
                                       categories=kwargs["categories"], options=module.options, precision="fp32")
    if not plane.any():  # bioimage.io's own validation refuses an all-zero test output
        raise CupreError(f"{model_file}: finds no cell in the sample image ({sample or 'the built-in sample'}) at "
                         f"score threshold {options.score_threshold:g}, and a bioimage.io package needs a test output with "
                         "objects: give --sample IMAGE (one of your images where it finds cells), or train it longer")
    label = plane.astype("int32")[None, None]
    name = name or f"cupre {kwargs['detector'].get('backbone', '')} cell segmentation".replace("  ", " ")
    with tempfile.TemporaryDirectory(prefix="cupre-export-") as folder:
        work = Path(folder)
        torch.save(module.state_dict(), work / "weights.pt")
        scripted = work / "weights.torchscript.pt"  # the same inference, checked on the same sample
        torch.jit.save(checked_script(module.net, raw, plane, module.options, where=model_file), str(scripted))
        np.save(work / "test_input.npy", raw[None, None])
        np.save(work / "test_output.npy", label)
        writers.write_overlay(work / "cover.png", writers.normalised_rgb(normalize(raw)), plane, rows)
        (work / "README.md").write_text(documentation(name, kwargs, dict(ckpt.get("training") or {})))
        space = [spec.SpaceInputAxis(id=spec.AxisId(a), size=spec.ParameterizedSize(min=MIN_SIDE, step=32))
                 for a in "yx"]
        descr = spec.ModelDescr(
            name=name,
            description="Cell instance segmentation (Mask R-CNN, CUPre pre-training): a grey image in, "
                        "its instance label image out.",
            authors=[spec.Author(name=author)],
            cite=[spec.CiteEntry(text=PAPER, doi=spec.Doi(PAPER_DOI))],
            license=spec.LicenseId("MIT"),
            documentation=spec.FileDescr(source=work / "README.md"),
            covers=[spec.FileDescr(source=work / "cover.png")],
            tags=["instance-segmentation", "cells", "nuclei", "mask-rcnn", "pytorch", "cupre"],
            inputs=[spec.InputTensorDescr(
                id=spec.TensorId("raw"),
                description="raw intensities of one grey image",
                axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("grey")]), *space],
                test_tensor=spec.FileDescr(source=work / "test_input.npy"),
                data=spec.IntervalOrRatioDataDescr(type="float32"))],
            outputs=[spec.OutputTensorDescr(
                id=spec.TensorId("labels"),
                description="instance label image: 0 background, one id per cell",
                axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("labels")]),
                      *[spec.SpaceOutputAxis(id=spec.AxisId(a), size=spec.SizeReference(
                          tensor_id=spec.TensorId("raw"), axis_id=spec.AxisId(a))) for a in "yx"]],
                test_tensor=spec.FileDescr(source=work / "test_output.npy"),
                data=spec.IntervalOrRatioDataDescr(type="int32"))],
            weights=spec.WeightsDescr(pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
                source=work / "weights.pt",
                architecture=spec.ArchitectureFromLibraryDescr(
                    callable=spec.Identifier("LabelImageModel"), import_from="cupre.export.label_model",
                    kwargs=kwargs),
                pytorch_version=spec.Version(torch.__version__.split("+")[0])),
                torchscript=spec.TorchscriptWeightsDescr(
                    source=scripted, parent="pytorch_state_dict",
                    comment="the same inference scripted (cupre.export.torchscript): runs without cupre where "
                            "torchvision's ops are registered (import torchvision); images larger than 1024 px at "
                            "the model's object scale run in one piece, not tiled",
                    pytorch_version=spec.Version(torch.__version__.split("+")[0]))),
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            save_bioimageio_package(descr, output_path=out)
        except (ValueError, RuntimeError) as exc:  # bioimage.io's validation of the package
            first = " ".join(str(exc).split())[:300]
            raise CupreError(f"{out}: bioimage.io's validation refused the package ({first})") from None
    return out

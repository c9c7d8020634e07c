"""``cupre export --format onnx``: the detector network as ONNX, where torchvision's
detection operators export.

The ONNX model takes ``image``, a ``1 x 3 x H x W`` float32 image in [0, 1] already
normalised as cupre normalises (the 1st / 99.8th percentiles stretched to 0 / 1, a grey
plane given as three equal channels) and already resized to the model's object scale. It
returns ``boxes`` (``N x 4`` XYXY in input pixels), ``scores`` (``N``), ``labels``
(``N``, 1..C) and ``masks`` (``N x 28 x 28`` probabilities in box coordinates), N at most
the detection cap, in descending score. RoIAlign, NMS and the rest of the network are ONNX
operators; H and W may be any size.

What does not export, and stays with the caller (cupre does it in Python; the
TorchScript export has all of it):

* the normalisation and the object-scale rule (a first pass, the median size of its
  confident objects, a second pass at the factor): ``torch.export``, the route to ONNX in
  torch 2.9 and later, stops at the first decision that depends on the image's values;
* pasting the 28 x 28 masks into the image and painting the label image: in cupre's
  geometry pixel ``i`` is sampled at box coordinate ``i + 0.25`` and a pixel is
  foreground above the model's mask threshold; both are written in the model's metadata
  (``cupre.mask_threshold``, ``cupre.pixel_offset``), with the object size and the
  normalisation percentiles.

The RoI heads run in one piece here (cupre runs them in chunks), and the mask predictor as
its transposed convolution: the same function, so probabilities agree with cupre's to
float rounding, not bit for bit. Before writing, onnxruntime runs the model on the sample
image and on a second size, and its outputs must equal PyTorch's to 1e-3 (otherwise
nothing is written).

Needs ``onnx`` and ``onnxruntime`` (``pip install 'cupre[export]'``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cupre.errors import CupreError
from cupre.inference.options import DEFAULTS, DetectionOptions

LOG = logging.getLogger(__name__)
OPSET = 17
OUTPUTS = ("boxes", "scores", "labels", "masks")
TOLERANCE = 1e-3


class NonEmpty(nn.Module):
    """``inner`` run on its input plus one zero RoI, which is dropped after: the exported
    graph then holds for an image without detections (ONNX's GroupNorm reshapes to
    ``N x groups x -1``, which cannot be inferred from zero rows)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        pad = x.new_zeros((1, x.shape[1], x.shape[2], x.shape[3]))
        return self.inner(torch.cat([x, pad]))[:-1]


class OnnxDetector(nn.Module):
    """The detector from a normalised, object-scale image to its raw detections."""

    def __init__(self, transform: nn.Module, body: nn.Module, rpn: nn.Module, heads: nn.Module) -> None:
        super().__init__()
        self.transform, self.body, self.rpn, self.heads = transform, body, rpn, heads

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        images, _ = self.transform([image[0]])  # standardise and pad (torchvision's ONNX-aware batching)
        features = self.body(images.tensors)
        proposals, _ = self.rpn(images, features)
        detections, _ = self.heads(features, proposals, images.image_sizes)
        found = detections[0]
        return found["boxes"], found["scores"], found["labels"], found["masks"][:, 0]


def check_available() -> None:
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        raise CupreError("--format onnx needs onnx and onnxruntime: pip install 'cupre[export]'")


def export_onnx(model_file: Path, out: Path, *, options: DetectionOptions = DEFAULTS,
                sample: Path | None = None) -> Path:
    """Write the ONNX model ``out`` (see the module docstring); returns it.

    Raises:
        CupreError: onnx / onnxruntime missing, Cascade heads, an unreadable model file, or
            onnxruntime's outputs differing from PyTorch's (a bug to report).
    """
    check_available()
    import onnx

    from cupre.data.imageio import Normalization, normalize
    from cupre.export.sample import sample_fits, sample_image
    from cupre.export.torchscript import scriptable
    from cupre.fileio import atomic_path
    from cupre.inference.predict import load_model
    from cupre.models.paste import PIXEL_OFFSET

    net, _ = load_model(model_file, device=torch.device("cpu"), precision="fp32")
    options = options.for_model(net)
    plain = scriptable(net, options)
    plain.heads.mask_head = NonEmpty(plain.heads.mask_head)
    module = OnnxDetector(net.transform, plain.body, plain.rpn, plain.heads).eval()
    raw = sample_image(sample)
    image = normalize(raw)[None]
    with sample_fits(sample, raw), torch.no_grad():
        module(image)
    second = image[..., : max(64, image.shape[-2] * 3 // 4), : max(64, image.shape[-1] * 5 // 8)].flip(-1)
    norm = Normalization()
    facts = {"object_size": net.object_size, "mask_threshold": float(net.mask_threshold),
             "pixel_offset": PIXEL_OFFSET, "normalisation_percentiles": [norm.low, norm.high],
             "score_threshold": options.score_threshold, "max_detections": options.max_detections,
             "diameter": options.diameter,
             "model_file": str(model_file)}
    with atomic_path(out) as tmp:
        # torch's notes on its own exporter (legacy route, traced shapes) are for developers: logged, not shown
        with torch.no_grad(), warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always")
            torch.onnx.export(module, (image,), str(tmp), opset_version=OPSET, dynamo=False,
                              input_names=["image"], output_names=list(OUTPUTS),
                              dynamic_axes={"image": {2: "height", 3: "width"},
                                            **{name: {0: "detections"} for name in OUTPUTS}})
        for note in notes:
            LOG.debug("torch.onnx.export: %s", note.message)
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {f"cupre.{k}": json.dumps(v) for k, v in facts.items()})
        onnx.save(proto, str(tmp))
        for x in (image, second):
            check_outputs(module, tmp, x, where=model_file)
    return out


def check_outputs(module: nn.Module, path: Path, image: Tensor, *, where: Path | None = None) -> None:
    """onnxruntime's outputs for ``image`` equal ``module``'s (counts, labels; values to
    :data:`TOLERANCE`); raises CupreError naming the first that does not (and ``where``,
    the model file, else ``path``)."""
    import onnxruntime

    where = where or path
    with torch.no_grad():
        want = [t.numpy() for t in module(image)]
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # onnxruntime's own log lines: its failure becomes part of cupre's one line
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = session.run(list(OUTPUTS), {"image": image.numpy()})
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own kinds
        found = len(want[0])
        hint = (" The model finds no cell in the sample at this score threshold: give --sample IMAGE (one of your "
                "images where it finds cells) or a lower --score-threshold." if found == 0 else " Please report this.")
        raise CupreError(f"{where}: onnxruntime cannot run the exported network on a {image.shape[-2]} x "
                         f"{image.shape[-1]} image ({exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}); "
                         f"nothing written.{hint}") from None
    for name, g, w in zip(OUTPUTS, got, want):
        if g.shape != w.shape or not np.allclose(g, w, rtol=0, atol=TOLERANCE):
            raise CupreError(f"{where}: onnxruntime's {name} differ from PyTorch's on a "
                             f"{image.shape[-2]} x {image.shape[-1]} image; nothing written. Please report this.")

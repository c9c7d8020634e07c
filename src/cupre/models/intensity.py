"""One intensity rule the detector applies to every image it sees: a bright background
made dark.

Nuclei are bright on a dark field in fluorescence and dark on a bright one in
brightfield (stained or not). With ``DetectorConfig.invert_bright`` the detector inverts
an image whose mean intensity (of the [0, 1] image, all channels) is above
``BRIGHT_BACKGROUND``, so both kinds reach the backbone as bright objects on a dark
field. The rule lives in the detector's own transform, so that training, evaluation,
``cupre predict``, napari and the exports apply it alike, and the backbone's unsupervised
pre-training (MoCo, DenseCL) sees its views as the detector will.

On BBBC038 stage1_train, percentile-normalised, the mean is 0.01..0.26 on the 541 grey
fluorescence images and 0.57..0.85 on the 123 brightfield ones (colour and grey): the
threshold sits in the gap.

No ``from __future__ import annotations``: the TorchScript export scripts this function.
"""

import torch
from torch import Tensor

BRIGHT_BACKGROUND = 0.5


def dark_background(image: Tensor, threshold: float = BRIGHT_BACKGROUND) -> Tensor:
    """``1 - image`` where the [0, 1] image's mean (over its last three dims: a ``C x H x
    W`` image, or each of a ``B x C x H x W`` batch) is above ``threshold``, else the
    image (one ``where``, so that a traced export keeps the decision)."""
    bright = image.float().mean(dim=[-3, -2, -1], keepdim=True) > threshold
    return torch.where(bright, 1.0 - image, image)

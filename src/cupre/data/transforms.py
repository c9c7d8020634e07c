"""Training augmentations: two views for MoCo, and joint image/box/mask ones for detection.

Both work on the float32 ``3xHxW`` images in [0, 1] that every reader yields
(:mod:`cupre.data.sample`) and are built from :mod:`torchvision.transforms.v2`. The
detection transform applies the object-scale rule (:mod:`cupre.scale`); the
detector itself never resizes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision import ops, tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cupre.data.blobs import blob_size
from cupre.scale import scale_factor, typical_size


def is_colour(image: torch.Tensor) -> bool:
    """Whether a ``CxHxW`` image has colour, i.e. is not one grey plane replicated."""
    if image.shape[0] < 3:
        return False
    return not (torch.equal(image[0], image[1]) and torch.equal(image[0], image[2]))


class RandomRot90(v2.Transform):
    """Rotate by a random multiple of 90 degrees (images, boxes and masks together)."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"angle": 90.0 * int(torch.randint(4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["angle"] == 0:
            return inpt
        return F.rotate(inpt, params["angle"], expand=True)


class RandomGamma(v2.Transform):
    """Gamma correction ``x -> x ** gamma`` with ``gamma`` uniform in ``gamma`` (images only)."""

    def __init__(self, gamma: tuple[float, float] = (0.7, 1.5)) -> None:
        super().__init__()
        self.gamma = tuple(gamma)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        low, high = self.gamma
        return {"gamma": low + (high - low) * float(torch.rand(()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, (tv_tensors.BoundingBoxes, tv_tensors.Mask)):
            return inpt
        return F.adjust_gamma(inpt, params["gamma"])


# Ruifrok & Johnston's stain vectors (haematoxylin, eosin, DAB) as rows, optical density per RGB channel
HED_FROM_RGB_INV = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def grey(image: torch.Tensor) -> torch.Tensor:
    """Luminance (ITU-R 601) of a ``3xHxW`` image, replicated to three channels."""
    lum = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    return lum.expand(3, -1, -1).contiguous()


def stain_jitter(image: torch.Tensor, sigma: float = 0.05, bias: float = 0.05) -> torch.Tensor:
    """HED stain jitter (Tellez et al. 2018): each stain's optical density scaled by
    ``1 + U(-sigma, sigma)`` and shifted by ``U(-bias, bias)``."""
    stains = HED_FROM_RGB_INV / HED_FROM_RGB_INV.norm(dim=1, keepdim=True)
    od = -torch.log(image.clamp(min=1e-3)).permute(1, 2, 0)  # HxWx3
    hed = od @ torch.linalg.inv(stains)
    alpha = 1 + (2 * torch.rand(3) - 1) * sigma
    beta = (2 * torch.rand(3) - 1) * bias
    od = (hed * alpha + beta) @ stains
    return torch.exp(-od).permute(2, 0, 1).clamp(0.0, 1.0)


class AcquisitionJitter:
    """Photometric augmentation for acquisitions the labels do not show (images only).

    Each step with its own probability, on a ``3xHxW`` image in [0, 1]: a colour image
    made grey, or a grey one given a colour cast (a gamma per channel, as a stain tints
    by intensity); intensity inversion (bright nuclei on dark <-> dark on bright); on
    colour images HED stain jitter (Tellez et al. 2018), hue / saturation jitter and a
    channel shuffle; then brightness / contrast, gamma, Gaussian blur and noise
    (Cellpose's and StarDist's photometric augmentations, widened).
    """

    def __init__(self, *, p_grey: float = 0.2, p_colour: float = 0.2, p_invert: float = 0.25,
                 p_stain: float = 0.5, p_hue: float = 0.5, p_shuffle: float = 0.1, p_gamma: float = 0.5,
                 p_blur: float = 0.25, p_noise: float = 0.25) -> None:
        self.p = dict(grey=p_grey, colour=p_colour, invert=p_invert, stain=p_stain, hue=p_hue, shuffle=p_shuffle,
                      gamma=p_gamma, blur=p_blur, noise=p_noise)
        self.hue = v2.ColorJitter(saturation=0.3, hue=0.05)
        self.contrast = v2.ColorJitter(brightness=0.25, contrast=0.3)
        self.gamma = RandomGamma((0.6, 1.6))
        self.blur = v2.GaussianBlur(5, sigma=(0.1, 1.5))

    def chance(self, name: str) -> bool:
        return float(torch.rand(())) < self.p[name]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = image.as_subclass(torch.Tensor)
        colour = is_colour(x)
        if colour and self.chance("grey"):
            x, colour = grey(x), False
        elif not colour and self.chance("colour"):
            x = x.clamp(0.0, 1.0) ** torch.exp((2 * torch.rand(3, 1, 1) - 1) * math.log(2.0))
            colour = True
        if self.chance("invert"):
            x = 1.0 - x
        if colour:
            if self.chance("stain"):
                x = stain_jitter(x)
            if self.chance("hue"):
                x = self.hue(x)
            if self.chance("shuffle"):
                x = x[torch.randperm(3)]
        x = self.contrast(x)
        if self.chance("gamma"):
            x = self.gamma(x.clamp(0.0, 1.0))
        if self.chance("blur"):
            x = self.blur(x)
        if self.chance("noise"):
            x = x + torch.randn_like(x[:1] if not colour else x) * 0.03 * float(torch.rand(()))
        return x.clamp(0.0, 1.0).contiguous()


class TwoViews:
    """Two independent MoCo v2-style augmentations of one image (the query and key views).

    Random resized crop, horizontal/vertical flips, 90-degree rotations,
    brightness/contrast, gamma, Gaussian blur and Gaussian noise, all of which keep a
    grey image grey (it is augmented as one plane and replicated); colour images also
    get saturation/hue jitter.

    Args:
        crop_size: output side length.
        scale: area fraction range of the random resized crop.
        brightness, contrast: ColorJitter strengths.
        saturation, hue: ColorJitter strengths for colour images.
        gamma: range of the random gamma.
        blur_sigma: Gaussian blur sigma range (applied with probability 0.5).
        noise_sigma: Gaussian noise standard deviation (applied with probability 0.5).
    """

    def __init__(
        self,
        crop_size: int,
        *,
        scale: tuple[float, float] = (0.2, 1.0),
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        gamma: tuple[float, float] = (0.7, 1.5),
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        noise_sigma: float = 0.03,
    ) -> None:
        self.crop_size = crop_size
        kernel = max(3, (crop_size // 10) // 2 * 2 + 1)  # odd, about a tenth of the crop
        self.geometric = v2.Compose([
            v2.RandomResizedCrop(crop_size, scale=tuple(scale), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            RandomRot90(),
        ])
        self.colour = v2.RandomApply([v2.ColorJitter(saturation=saturation, hue=hue)], p=0.8)
        self.intensity = v2.Compose([
            v2.RandomApply([v2.ColorJitter(brightness=brightness, contrast=contrast)], p=0.8),
            v2.RandomApply([RandomGamma(gamma)], p=0.5),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma=tuple(blur_sigma))], p=0.5),
            v2.RandomApply([v2.GaussianNoise(sigma=noise_sigma, clip=True)], p=0.5),
        ])

    def view(self, image: torch.Tensor) -> torch.Tensor:
        """One augmented ``3 x crop_size x crop_size`` view of a ``3xHxW`` image in [0, 1]."""
        colour = is_colour(image)
        x = image if colour else image[:1]
        x = self.geometric(x)
        if colour:
            x = self.colour(x)
        x = self.intensity(x).clamp_(0.0, 1.0)
        return x if colour else x.expand(3, -1, -1).contiguous()

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(image), self.view(image)


class ObjectScaleViews(TwoViews):
    """Two views in which the cells measure about the detector's ``object_size``.

    Each image's cell size is guessed once (:func:`cupre.data.blobs.blob_size`, cached by
    the decoded image), the image is seen at ``object_size / size`` times a factor drawn
    log-uniformly in ``[1/jitter, jitter]`` per view, and the two views are
    ``crop_size`` windows whose centres lie within half a window of each other (they
    overlap, as MoCo's views of one image do). Flips, rotations and the intensity
    augmentations are :class:`TwoViews`'.
    """

    def __init__(self, crop_size: int, *, object_size: float, jitter: float = 1.5, **kwargs: Any) -> None:
        super().__init__(crop_size, **kwargs)
        self.object_size, self.jitter = object_size, jitter
        self.geometric = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()])
        self.sizes: dict[tuple, float | None] = {}

    def size_of(self, image: torch.Tensor) -> float | None:
        key = (image.data_ptr(), tuple(image.shape))  # the decoded-image cache hands out the same tensor
        if key not in self.sizes:
            self.sizes[key] = blob_size(image)
        return self.sizes[key]

    def window(self, image: torch.Tensor, centre: tuple[float, float], side: float) -> torch.Tensor:
        """The ``side`` px window around ``centre`` (zero beyond the image), resized to ``crop_size``."""
        h, w = image.shape[-2:]
        s = max(1, round(side))
        top = int(round(centre[0] - s / 2))
        left = int(round(centre[1] - s / 2))
        cut = F.crop(image, top, left, s, s)  # pads with zeros beyond the image
        return F.resize(cut, [self.crop_size, self.crop_size], antialias=True)

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base = scale_factor(self.object_size, self.size_of(image))
        h, w = image.shape[-2:]
        sides = [self.crop_size / (base * math.exp(math.log(self.jitter) * (2 * float(torch.rand(())) - 1)))
                 for _ in range(2)]
        first = (float(torch.rand(())) * h, float(torch.rand(())) * w)
        shift = [(float(torch.rand(())) - 0.5) * sides[0] for _ in range(2)]
        second = (min(h, max(0.0, first[0] + shift[0])), min(w, max(0.0, first[1] + shift[1])))
        return tuple(self.view(self.window(image, c, s)) for c, s in zip((first, second), sides))


class DetectionTrainTransform:
    """Joint augmentation of an image and its instances for detector training.

    First the object scale (:mod:`cupre.scale`): the image is rescaled by
    ``object_size / typical object size`` (measured on its boxes; 1 when
    ``object_size`` is None), times a factor drawn log-uniformly in
    ``[1/scale_jitter, scale_jitter]``. With ``crop_size`` the rescale is applied to a
    random window of ``crop_size / factor`` pixels (padded with the image's median where
    it is smaller: black padding looks like a nucleus on a bright background), so the output is always ``crop_size`` square. Then flips, 90-degree
    rotations and mild brightness/contrast. Boxes are recomputed from the transformed
    masks (tight, exclusive max) and instances with fewer than ``min_area`` mask pixels
    are dropped, labels kept aligned. Other target keys (``image_id``, ``file``,
    ``cell_type`` ...) pass through unchanged.

    Args:
        crop_size: side of the random square crop; ``None``: the whole image.
        object_size: the typical object side (px) the detector works at, or None.
        scale_jitter: >= 1; the random rescale range (1: none).
        flips: random horizontal and vertical flips.
        rot90: random rotations by multiples of 90 degrees.
        intensity: mild random brightness/contrast.
        strong: a student's strong augmentation on top (self-training; Unbiased
            Teacher's photometric part): stronger brightness/contrast, Gaussian blur
            and noise, each applied with probability 0.5.
        acquisition: :class:`AcquisitionJitter` in place of the mild brightness/contrast.
        background: False to make the whole crop an ignore region where it holds an
            instance: only the instances teach (pseudo-labels, whose missed objects would
            otherwise teach background); a crop without any keeps its background.
        min_area: minimum mask area (pixels) of a kept instance.
    """

    def __init__(
        self,
        *,
        crop_size: int | None = None,
        object_size: float | None = None,
        scale_jitter: float = 1.0,
        flips: bool = True,
        rot90: bool = True,
        intensity: bool = True,
        strong: bool = False,
        background: bool = True,
        acquisition: bool = False,
        min_area: int = 4,
    ) -> None:
        if scale_jitter < 1.0:
            raise ValueError(f"scale_jitter must be >= 1, got {scale_jitter}")
        self.crop_size, self.object_size, self.scale_jitter = crop_size, object_size, scale_jitter
        self.min_area, self.background = min_area, background
        self.acquisition = AcquisitionJitter() if acquisition else None
        steps: list[v2.Transform] = []
        if flips:
            steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
        if rot90:
            steps.append(RandomRot90())
        if intensity and not acquisition:
            steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2))
        if strong:
            steps += [v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=0.5),
                      v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.5),
                      v2.RandomApply([v2.GaussianNoise(sigma=0.03, clip=True)], p=0.5)]
        self.transform = v2.Compose(steps) if steps else None

    def factor(self, boxes: torch.Tensor) -> float:
        """The rescale factor of one sample: object scale times a random jitter."""
        factor = scale_factor(self.object_size, typical_size(boxes))
        if self.scale_jitter > 1.0:
            span = math.log(self.scale_jitter)
            factor *= math.exp(span * (2.0 * float(torch.rand(())) - 1.0))
        return factor

    def rescale(self, img, boxes, masks, factor: float):
        """Crop a ``crop_size / factor`` window (or take the whole image) and resize it by ``factor``."""
        if self.crop_size is None:
            if factor == 1.0:
                return img, boxes, masks
            size = [max(1, round(s * factor)) for s in img.shape[-2:]]
            return v2.Resize(size, antialias=True)(img, boxes, masks)
        window = max(1, round(self.crop_size / factor))
        # padded with the image's median: black padding looks like a nucleus on a bright background
        fill: Any = {tv_tensors.Image: [float(v) for v in img.flatten(1).median(dim=1).values], "others": 0}
        img, boxes, masks = v2.RandomCrop(window, pad_if_needed=True, fill=fill)(img, boxes, masks)
        if window != self.crop_size:
            img, boxes, masks = v2.Resize((self.crop_size, self.crop_size), antialias=True)(img, boxes, masks)
        return img, boxes, masks

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        """Args: ``image`` float ``3xHxW`` in [0, 1]; ``target`` as in :mod:`cupre.data.sample`.

        Returns:
            ``(image, target)``: plain tensors, ``boxes`` float32 ``Mx4`` XYXY,
            ``labels`` int64 ``M``, ``masks`` uint8 ``MxH'xW'`` with ``M <= N``, and
            ``ignore_boxes`` float32 ``Jx4``: the boxes of the ``ignore_masks`` (crowd /
            unsure regions) that the crop keeps, in place of those masks.
        """
        img = tv_tensors.Image(image)
        n = len(target["masks"])
        ignore = target.get("ignore_masks")
        both = target["masks"] if ignore is None or not len(ignore) else torch.cat([target["masks"], ignore])
        masks = tv_tensors.Mask(both)  # objects, then ignore regions: one geometry for all
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=tuple(image.shape[-2:]))
        img, boxes, masks = self.rescale(img, boxes, masks, self.factor(target["boxes"]))
        if self.transform is not None:
            img, boxes, masks = self.transform(img, boxes, masks)
        img = img.as_subclass(torch.Tensor)
        if self.acquisition is not None:
            img = self.acquisition(img)
        img = img.clamp(0.0, 1.0)
        masks = masks.as_subclass(torch.Tensor)
        keep = masks.flatten(1).sum(dim=1) >= self.min_area  # N + K
        out = {k: v for k, v in target.items() if k != "ignore_masks"}
        out["masks"] = masks[:n][keep[:n]].to(torch.uint8)
        out["labels"] = target["labels"][keep[:n]]
        out["boxes"] = masks_to_boxes_exclusive(out["masks"])
        out["ignore_boxes"] = masks_to_boxes_exclusive(masks[n:][keep[n:]])
        if not self.background and len(out["boxes"]):  # a crop without objects keeps its background: a
            height, width = img.shape[-2:]                 # batch of nothing to learn has no defined loss
            whole = torch.tensor([[0.0, 0.0, float(width), float(height)]])
            out["ignore_boxes"] = torch.cat([out["ignore_boxes"], whole])
        return img, out


def masks_to_boxes_exclusive(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes, ``x2``/``y2`` exclusive, of non-empty masks ``NxHxW`` -> float32 ``Nx4``."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    boxes = ops.masks_to_boxes(masks.bool()).to(torch.float32)
    boxes[:, 2:] += 1.0
    return boxes

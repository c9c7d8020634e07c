"""The paper's methods in one table: what each fine-tuning starts from, the pre-training
products it loads, and its name in Table II and the figures.

A method's name is its ``--init`` value and its ``method`` in results.csv; ``cupre+st``
is the ``cupre`` cell followed by self-training. ``cupre pretrain`` writes the products
(:data:`PRODUCTS`); a method loads one product's whole detector and/or another's backbone,
everything else starts fresh (:func:`cupre.train.inits.build_init` builds it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from cupre.errors import CupreError


@dataclass(frozen=True)
class Product:
    """A model file ``cupre pretrain`` writes.

    Attributes:
        name: what the methods call it.
        file: its path in the pretrain run folder.
        setting: the ``PretrainConfig`` flag that asks for it (None: always made).
        amt2: made by AMT2's rounds, from the warm-up's weights.
        moco_steps: AMT2 with its MoCo steps (False: the COCO steps alone).
        l2sp: AMT2's COCO steps under L2-SP towards the backbone the MoCo step left.
    """

    name: str
    file: str
    setting: str | None = None
    amt2: bool = False
    moco_steps: bool = False
    l2sp: bool = False


# In the order `cupre pretrain` makes them.
PRODUCTS = {p.name: p for p in (
    # the COCO warm-up
    Product("warmup", "warmup/model.safetensors"),
    # after K AMT2 rounds
    Product("cupre", "amt2/model.safetensors", amt2=True, moco_steps=True, l2sp=True),
    # the ablation: AMT2 without L2-SP
    Product("cupre-nol2sp", "amt2-nol2sp/model.safetensors", "nol2sp", amt2=True, moco_steps=True),
    # the warm-up plus AMT2's K COCO steps without MoCo, and so without the L2-SP that anchors
    # them to MoCo's weights: as many COCO iterations as CUPre, same subsets and schedule
    Product("coco", "coco/model.safetensors", "coco_baseline", amt2=True),
    # MoCo v2 on the cells from scratch, as many MoCo iterations as all AMT2 rounds together
    Product("cells-moco", "cells-moco/model.safetensors", "cells_moco"),
)}


@dataclass(frozen=True)
class Method:
    """One initialisation of fine-tuning.

    Attributes:
        name: its ``--init`` value and its method in results.csv.
        label: its name in Table II and the figures.
        model: product whose whole detector is loaded (None: a fresh detector).
        backbone: product whose backbone replaces the loaded (or fresh) one.
        l2sp: fine-tune with L2-SP towards the loaded weights (the paper's Eq. 7).
    """

    name: str
    label: str
    model: str | None = None
    backbone: str | None = None
    l2sp: bool = False

    @property
    def products(self) -> list[str]:
        return [p for p in (self.model, self.backbone) if p is not None]


# In the order of Table II's rows, the figures' colours and the CLI's help.
METHODS = {m.name: m for m in (
    Method("scratch", "scratch"),  # Kaiming initialisation, nothing pre-trained
    Method("coco", "coco", model="coco"),  # the COCO model
    Method("cells-moco", "cells-moco", backbone="cells-moco"),  # Cells-MoCo's backbone, a fresh neck and head
    Method("coco++", "coco++", model="coco", backbone="cells-moco"),  # Cells-MoCo's backbone, coco's neck and head
    Method("cupre", "cupre", model="cupre"),  # the model after all AMT2 rounds
    Method("cupre-nol2sp", "cupre-nol2sp", model="cupre-nol2sp"),  # the same, AMT2 run without L2-SP
    Method("cupre++", "cupre++", model="cupre", l2sp=True),  # cupre, fine-tuned with L2-SP towards it
)}
METHOD_NAMES = tuple(METHODS)

# The comparisons the paper draws: Table II pairs every other method with each reference, in
# this order; Fig. 6 draws the ablations as bars in this order, each next to the first one.
REFERENCES = ("coco", "scratch")
ABLATIONS = ("coco", "coco++", "cupre-nol2sp", "cupre", "cupre++")

SELF_TRAIN = "+st"  # method suffix: the method's cell, then self-training on the train part's unlabeled images


def base_method(method: str) -> str:
    """The initialisation a method starts from (``cupre+st`` -> ``cupre``)."""
    return method.removesuffix(SELF_TRAIN)


def get_method(name: str) -> Method:
    """The row of initialisation ``name``.

    Raises:
        CupreError: no such method (the valid ones listed).
    """
    if name not in METHODS:
        raise CupreError(f"unknown initialisation {name!r}; choose one of {', '.join(METHOD_NAMES)}")
    return METHODS[name]


def needed_products(methods: Iterable[str]) -> set[str]:
    """The products the ``methods`` (each optionally with ``+st``) load."""
    return {p for m in methods for p in get_method(base_method(m)).products}


def method_label(method: str) -> str:
    """A method's name in tables and figures (a name outside the table, such as a shipped
    model's row, as it is)."""
    row = METHODS.get(base_method(method))
    return method if row is None else row.label + method[len(row.name):]

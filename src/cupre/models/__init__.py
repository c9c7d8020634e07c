"""Models: the paper's Back (timm backbone), Neck (FPN) and Head (RPN + RoI heads), and MoCo.

``PIXEL_MEAN`` / ``PIXEL_STD`` standardise the [0, 1] images of :mod:`cupre.data.imageio`
before the backbone, in the detector and in MoCo alike.
"""

PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.25, 0.25, 0.25)

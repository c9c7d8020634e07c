"""A detector over whole images of any size: overlapping tiles (:mod:`.tiles`), the
object-scale rule and the merge (:mod:`.tiling`), and the objects found, each a box and a
mask cropped to its extent (:mod:`.objects`).

``cupre predict``, validation while fine-tuning, the napari widget and the exports all run
a model through :func:`cupre.detect.tiling.predict_at_object_scale`.
"""

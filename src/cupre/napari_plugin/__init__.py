"""cupre in napari: segment a layer, correct the labels, fine-tune, segment again.

Registered with napari through the ``napari.manifest`` entry point (``napari.yaml``);
installed with ``pip install 'cupre[napari]'``. It contributes:

* *Segment cells* (:func:`cupre.napari_plugin.widgets.segment_widget`): runs a cupre
  model on the selected image layer in a worker thread and adds a Labels layer whose
  features are the object table of ``cupre predict`` (score, area, centroid, ...);
* *Fine-tune* (:func:`cupre.napari_plugin.widgets.finetune_widget`): fine-tunes the model
  further on an image layer and the Labels layer painted or corrected on it, and writes
  the new model file;
* a reader for ``cupre predict`` outputs (``name_masks.tif`` with its
  ``name_objects.csv`` as the layer's features);
* sample data: a synthetic cell image, to try it without files of one's own.
"""

"""Shipped pipeline presets: ``voc.yaml`` and ``coco.yaml`` hold the GRM paper's recipe (``--config voc``)."""

"""Class lists of the supported datasets: canonical names, the phrases that get embedded, COCO category ids.

Index 0 is always ``"background"``: the K nodes of a segmentation model are background + the object classes,
in the dataset's usual order (VOC: alphabetical as in the devkit; COCO: by category id).
"""

from __future__ import annotations

DATASETS = ("voc", "coco")

# PASCAL VOC 2012, devkit order; the segmentation masks use these indices (255 = ignore).
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# The natural-language phrase embedded for each VOC class (same order).
VOC_PHRASES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor",
)  # fmt: skip

# COCO 2014/2017: background + the 80 "things" in category-id order (the ids have gaps, see COCO_CATEGORY_IDS).
COCO_CLASSES = (
    "background",
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip

# Phrases embedded for COCO: the names, with the ambiguous or misspelt ones made explicit.
_COCO_PHRASE_OVERRIDES = {
    "tv": "television",
    "mouse": "computer mouse",
    "remote": "remote control",
    "keyboard": "computer keyboard",
    "hair drier": "hair dryer",
}
COCO_PHRASES = tuple(_COCO_PHRASE_OVERRIDES.get(name, name) for name in COCO_CLASSES)

# The official COCO category id of each of the 80 object classes (COCO_CLASSES[1:]), in the same order.
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
    34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip

_CLASSES = {"voc": VOC_CLASSES, "coco": COCO_CLASSES}
_PHRASES = {"voc": VOC_PHRASES, "coco": COCO_PHRASES}


def check_dataset(dataset: object) -> str:
    """Return the dataset key (``"voc"`` or ``"coco"``, case-insensitive), else raise ValueError."""
    key = dataset.lower() if isinstance(dataset, str) else None
    if key not in _CLASSES:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {list(DATASETS)}")
    return key


def class_names(dataset: str) -> list[str]:
    """The K class names of ``dataset`` (``"voc"``: 21, ``"coco"``: 81), background first.

    These are the dataset's own names (``"diningtable"``, ``"tvmonitor"`` for VOC); see :func:`class_phrases`
    for the natural-language phrases that were embedded.
    """
    return list(_CLASSES[check_dataset(dataset)])


def class_phrases(dataset: str) -> list[str]:
    """The K phrases embedded for ``dataset`` (``"dining table"`` for VOC's ``"diningtable"``, ...)."""
    return list(_PHRASES[check_dataset(dataset)])

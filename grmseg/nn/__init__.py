"""nn.Modules built on the grmseg ops, and the classification stage's losses."""

from grmseg.nn.graph_conv import GraphConv
from grmseg.nn.grm import GRM
from grmseg.nn.knowledge_head import KnowledgeGCNHead
from grmseg.nn.losses import multilabel_focal_loss

__all__ = ["GRM", "GraphConv", "KnowledgeGCNHead", "multilabel_focal_loss"]

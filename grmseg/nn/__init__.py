"""nn.Modules built on the grmseg ops."""

from grmseg.nn.graph_conv import GraphConv
from grmseg.nn.grm import GRM
from grmseg.nn.knowledge_head import KnowledgeGCNHead

__all__ = ["GRM", "GraphConv", "KnowledgeGCNHead"]

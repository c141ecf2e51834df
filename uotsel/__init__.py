"""uotsel: choose which pre-training data to reuse while fine-tuning, by unbalanced OT.

The method of Liu et al., "Improved Fine-Tuning by Better Leveraging Pre-Training Data"
(NeurIPS 2022): represent every pre-training class (or k-means cluster) and every target class
by its mean feature, solve an entropic unbalanced optimal-transport problem between them, and
reuse the pre-training units that send the most mass.

Quick start::

    import uotsel
    sel = uotsel.select(source_means, target_means, top_k=100)   # paper defaults
    sel.selected        # [100] unit ids, best first

Depends on jax and numpy only.
"""

from uotsel import embedded
from uotsel.cache import enable_compilation_cache
from uotsel.centroids import ClassMeanAccumulator, ClassMeans, class_means
from uotsel.clustering import KMeansResult, kmeans
from uotsel.costs import COSTS, cosine_cost, cost_matrix, l2_cost, sqeuclidean_cost
from uotsel.feature_transport import transport
from uotsel.selection import Selection, expand_to_samples, rank, select, split_groups
from uotsel.strategies import STRATEGIES, Scores
from uotsel.unbalanced import SinkhornOutput, sinkhorn

__version__ = "0.1.0"

__all__ = [
    "COSTS",
    "STRATEGIES",
    "ClassMeanAccumulator",
    "ClassMeans",
    "KMeansResult",
    "Scores",
    "Selection",
    "SinkhornOutput",
    "class_means",
    "cosine_cost",
    "cost_matrix",
    "embedded",
    "enable_compilation_cache",
    "expand_to_samples",
    "kmeans",
    "l2_cost",
    "rank",
    "select",
    "sinkhorn",
    "split_groups",
    "sqeuclidean_cost",
    "transport",
]

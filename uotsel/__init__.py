"""uotsel: choose which pre-training data to reuse while fine-tuning, by unbalanced OT.

The method of Liu et al., "Improved Fine-Tuning by Better Leveraging Pre-Training Data"
(NeurIPS 2022): represent every pre-training class (or k-means cluster) and every target class
by its mean feature, solve an entropic unbalanced optimal-transport problem between them, and
reuse the pre-training units that send the most mass.

Quick start::

    import uotsel
    sel = uotsel.select(source_means, target_means, top_k=100)   # paper defaults
    sel.selected        # [100] unit ids, best first
    uotsel.select(source_means, target_means, uotsel.UOT(tau_target=50.0))  # one change

Depends on jax and numpy only.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it. They load on first use (PEP 562), so that
# ``import uotsel`` and its light modules (the command lines' parser kit) do not load JAX.
_EXPORTS = {
    "COSTS": "uotsel.costs",
    "ClassMeanAccumulator": "uotsel.centroids",
    "ClassMeans": "uotsel.centroids",
    "Cost": "uotsel.costs",
    "KMeansResult": "uotsel.clustering",
    "STRATEGIES": "uotsel.strategies",
    "SampleSelection": "uotsel.per_sample",
    "Scores": "uotsel.strategies",
    "Selection": "uotsel.selection",
    "SinkhornOutput": "uotsel.unbalanced",
    "UOT": "uotsel.settings",
    "best_samples": "uotsel.per_sample",
    "class_means": "uotsel.centroids",
    "cosine_cost": "uotsel.costs",
    "cost_matrix": "uotsel.costs",
    "embedded": "uotsel.embedded",
    "enable_compilation_cache": "uotsel.cache",
    "expand_to_samples": "uotsel.selection",
    "fit_budget": "uotsel.budget",
    "kmeans": "uotsel.clustering",
    "l2_cost": "uotsel.costs",
    "rank": "uotsel.selection",
    "sample_scores": "uotsel.per_sample",
    "select": "uotsel.selection",
    "select_samples": "uotsel.per_sample",
    "sinkhorn": "uotsel.unbalanced",
    "split_groups": "uotsel.selection",
    "sqeuclidean_cost": "uotsel.costs",
    "transport": "uotsel.feature_transport",
    "unit_sizes": "uotsel.budget",
}

__all__ = [
    "COSTS",
    "ClassMeanAccumulator",
    "ClassMeans",
    "Cost",
    "KMeansResult",
    "STRATEGIES",
    "SampleSelection",
    "Scores",
    "Selection",
    "SinkhornOutput",
    "UOT",
    "best_samples",
    "class_means",
    "cosine_cost",
    "cost_matrix",
    "embedded",
    "enable_compilation_cache",
    "expand_to_samples",
    "fit_budget",
    "kmeans",
    "l2_cost",
    "rank",
    "sample_scores",
    "select",
    "select_samples",
    "sinkhorn",
    "split_groups",
    "sqeuclidean_cost",
    "transport",
    "unit_sizes",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if importlib.util.find_spec(f"uotsel.{name}") is None:
            raise AttributeError(f"module 'uotsel' has no attribute {name!r}")
        module = f"uotsel.{name}"  # a submodule, as ``uotsel.unbalanced``
    loaded = importlib.import_module(module)
    value = loaded if module == f"uotsel.{name}" else getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from uotsel import embedded
    from uotsel.budget import fit_budget, unit_sizes
    from uotsel.cache import enable_compilation_cache
    from uotsel.centroids import ClassMeanAccumulator, ClassMeans, class_means
    from uotsel.clustering import KMeansResult, kmeans
    from uotsel.costs import COSTS, Cost, cosine_cost, cost_matrix, l2_cost, sqeuclidean_cost
    from uotsel.feature_transport import transport
    from uotsel.per_sample import SampleSelection, best_samples, sample_scores, select_samples
    from uotsel.selection import Selection, expand_to_samples, rank, select, split_groups
    from uotsel.settings import UOT
    from uotsel.strategies import STRATEGIES, Scores
    from uotsel.unbalanced import SinkhornOutput, sinkhorn

"""The paper's settings (Liu et al., NeurIPS 2022), defined once; every default of the library
and of the command line that follows the paper is imported from here.

Selection: cosine cost (``COST``) ``C = (1 - cos) / EPS_C``, entropic unbalanced OT with ``EPS``,
``TAU_SOURCE`` (pre-training side, relaxed) and ``TAU_TARGET`` (every target class covered), unit
mass on every unit, the top ``TOP_K_CLASSES`` classes (labelled pre-training data) or
``TOP_K_CLUSTERS`` of ``N_CLUSTERS`` spherical k-means clusters (unlabelled), and ``N_GROUPS``
score groups for the domain-gap study (Fig. 4b). The Greedy-OT baseline (Cui et al., 2018; the
paper's Table 1) uses ``GREEDY_OT_COST`` on the raw means. ``SOLVER_RTOL`` and
``SOLVER_MAX_ITER`` are this library's certified stopping rule (see ``docs/solver.md``), not the
paper's.
"""

COST = "cosine"
EPS_C = 0.01
EPS = 1.0
TAU_SOURCE = 1.0
TAU_TARGET = 100.0
TOP_K_CLASSES = 100
TOP_K_CLUSTERS = 200
N_CLUSTERS = 2000
N_GROUPS = 10
GREEDY_OT_COST = "l2"
SOLVER_RTOL = 1e-5
SOLVER_MAX_ITER = 1000

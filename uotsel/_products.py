"""The solver's matrix-vector products, in the form chosen for the platform.

On CPU a product is a BLAS call (``dot``): the fastest form there. On an accelerator it is
written as a reduction (``reduce``), in full float32 and with nothing for the autotuner to
tune, which the compiler fuses with the ``exp`` that makes its vector and the ``log`` that reads
its sums (compiled by XLA for CUDA at 2000 x 200: the row sums are one kernel, the column sums
a multiplication and a reduction; ``benchmarks/gpu_programs.py``).
``products`` is ``"dot"``, ``"reduce"``, or ``"auto"``: chosen when the program is lowered, by
the platform it is lowered for (``jax.lax.platform_dependent``: ``dot`` for CPU, ``reduce``
elsewhere), which a backend query at trace time cannot tell.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

PRODUCTS = ("auto", "dot", "reduce")
_HIGHEST = jax.lax.Precision.HIGHEST


def choose(products: str, dot, reduce, *args: Array) -> Array:
    """``dot(*args)`` or ``reduce(*args)`` as ``products`` says (see the module docstring)."""
    if products == "dot":
        return dot(*args)
    if products == "reduce":
        return reduce(*args)
    return jax.lax.platform_dependent(*args, cpu=dot, default=reduce)


def col_sums(x: Array, kernel: Array, products: str) -> Array:
    """``sum_i x_i K_ij`` ``[m]`` for ``x`` ``[n]`` and ``K`` ``[n, m]``."""
    return choose(
        products, lambda x, k: x @ k, lambda x, k: jnp.sum(x[:, None] * k, axis=0), x, kernel
    )


def row_sums(kernel: Array, v: Array, products: str) -> Array:
    """``sum_j K_ij v_j`` ``[n]`` for ``K`` ``[n, m]`` and ``v`` ``[m]``."""
    return choose(
        products, lambda k, v: k @ v, lambda k, v: jnp.sum(k * v[None, :], axis=1), kernel, v
    )


def block_col_sums(x: Array, kernel: Array, products: str) -> Array:
    """``sum_b x_kbc K_kbj`` ``[k, c, m]`` for ``x`` ``[k, b, c]`` and ``K`` ``[k, b, m]``, in
    full float32 precision (no reduced-precision matrix units)."""

    def dot(x, k):
        return jnp.einsum("kbc,kbm->kcm", x, k, precision=_HIGHEST)

    def reduce(x, k):
        return jnp.sum(x[..., None] * k[:, :, None, :], axis=1)

    return choose(products, dot, reduce, x, kernel)


def row_sums_many(kernel: Array, v: Array, products: str) -> Array:
    """``sum_j K_ij v_jc`` ``[n, c]`` for ``K`` ``[n, m]`` and ``v`` ``[m, c]``, in full
    float32 precision."""

    def dot(k, v):
        return jnp.matmul(k, v, precision=_HIGHEST)

    def reduce(k, v):
        return jnp.sum(k[:, :, None] * v[None], axis=1)

    return choose(products, dot, reduce, kernel, v)

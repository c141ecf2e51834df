"""Loop bodies that run several iterations between two tests of the loop's condition.

On a GPU every test of a ``while_loop``'s condition copies the predicate to the host and waits
for the device. :func:`run` makes one trip of the loop ``count`` iterations, each kept or
masked by the condition on the state before it, so the iterates are those of ``count`` trips.
Keeping or masking an iteration selects between the new and old state: with the state packed
into two arrays (:class:`Layout`) that is two kernels whatever the number of leaves.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


def run(iterate, go, count: int, state, unroll: int = 1):
    """``count`` iterations ``iterate(state, live)`` from ``state`` (the loop's condition ``go``
    having just held), each ``live`` only where ``go`` holds for the state before it: the same
    iterates as ``count`` trips of the loop, with one test of its condition. ``unroll`` of them
    are written out one after another in the compiled body (``jax.lax.fori_loop``'s)."""
    if count == 1:
        return iterate(state, jnp.bool_(True))
    leaves, tree = jax.tree.flatten(state)
    layout = Layout.of(leaves)

    def one(_, packed):
        state = jax.tree.unflatten(tree, layout.unpack(packed))
        return layout.pack(jax.tree.leaves(iterate(state, go(state))))

    packed = jax.lax.fori_loop(0, count, one, layout.pack(leaves), unroll=unroll)
    return jax.tree.unflatten(tree, layout.unpack(packed))


class Layout(NamedTuple):
    """A state packed into two arrays: the vector leaves end to end in one float dtype (a
    vector of counters or flags converted to the integer of that width, its bits kept), and the
    scalar leaves as the bits of one integer vector (a float's bits kept exactly; a counter or
    flag converted), so that keeping or masking an iteration is two kernels whatever the number
    of leaves, and a program returns the state as two arrays. The float leaves share one dtype;
    integers fit in its width. ``leaves`` may be arrays or ``jax.ShapeDtypeStruct``."""

    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[Any, ...]
    bits: Any  # the integer dtype holding the scalars

    @classmethod
    def of(cls, leaves) -> Layout:
        dtypes = tuple(jnp.result_type(x) for x in leaves)
        (width,) = {d.itemsize for d in dtypes if jnp.issubdtype(d, jnp.floating)} or {4}
        return cls(tuple(jnp.shape(x) for x in leaves), dtypes, jnp.dtype(f"int{8 * width}"))

    def pack(self, leaves) -> list[Array]:
        """``[vectors [sum of the vector leaves' sizes], scalars [number of scalar leaves]]``."""
        parts = list(zip(leaves, self.shapes, self.dtypes, strict=True))
        vectors = [self._to_float(jnp.ravel(x), dtype) for x, shape, dtype in parts if shape]
        scalars = [self._to_bits(x, dtype) for x, shape, dtype in parts if not shape]
        return [
            jnp.concatenate(vectors) if vectors else jnp.zeros(0, self._float),
            jnp.stack(scalars) if scalars else jnp.zeros(0, self.bits),
        ]

    def unpack(self, packed) -> list[Array]:
        """The leaves :meth:`pack` packed, bit for bit."""
        vectors, scalars = packed
        leaves, at, row = [], 0, 0
        for shape, dtype in zip(self.shapes, self.dtypes, strict=True):
            if shape:
                size = math.prod(shape)
                leaves.append(self._from_float(vectors[at : at + size].reshape(shape), dtype))
                at += size
            else:
                leaves.append(self._from_bits(scalars[row], dtype))
                row += 1
        return leaves

    @property
    def _float(self):
        """The dtype of the packed vectors: the float leaves' (of the integer's width)."""
        return jnp.dtype(f"float{8 * self.bits.itemsize}")

    def _to_float(self, x: Array, dtype) -> Array:
        if jnp.issubdtype(dtype, jnp.floating):
            return x
        return jax.lax.bitcast_convert_type(x.astype(self.bits), self._float)

    def _from_float(self, x: Array, dtype) -> Array:
        if jnp.issubdtype(dtype, jnp.floating):
            return x
        return self._from_bits(jax.lax.bitcast_convert_type(x, self.bits), dtype)

    def _to_bits(self, x: Array, dtype) -> Array:
        if jnp.issubdtype(dtype, jnp.floating):
            return jax.lax.bitcast_convert_type(x, self.bits)
        return x.astype(self.bits)

    def _from_bits(self, x: Array, dtype) -> Array:
        if jnp.issubdtype(dtype, jnp.floating):
            return jax.lax.bitcast_convert_type(x, dtype)
        if dtype == jnp.bool_:
            return x != 0
        return x.astype(dtype)

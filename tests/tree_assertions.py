"""Comparing pytrees in tests: the structure and every leaf.

A bare `zip(jax.tree.leaves(a), jax.tree.leaves(b))` stops at the shorter
tree and ignores the structure, so a missing or extra parameter would pass.
"""

import jax
import numpy as np


def assert_trees_equal(actual, expected) -> None:
  """Same tree structure, and every leaf exactly equal."""
  leaves_actual, structure_actual = jax.tree.flatten(actual)
  leaves_expected, structure_expected = jax.tree.flatten(expected)
  assert structure_actual == structure_expected, (structure_actual,
                                                  structure_expected)
  for got, want in zip(leaves_actual, leaves_expected, strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

"""Compiled corrections: the one cache of `Task.correct` executables.

Evaluation (`evaluation.PairCorrector`) and inference (`inference.Corrector`)
both correct through `run`: the method's `Task.correct` with integer pixels
converted to float on the device (so uint8 photos cross to an accelerator
at a quarter of the float32 size), compiled once per (task, network, and
the structure, shapes, dtypes and shardings of params, images and
reference). Params are arguments, not constants, so checkpoints of one
architecture share executables. The cache keeps the `MAX_COMPILED` most
recently used executables: a folder of photos of many sizes does not hold
one per size forever.
"""

import collections
from typing import Any, Callable

import jax

from expcorr_jax import pixels
from expcorr_jax.tasks import contract

MAX_COMPILED = 64

# key -> executable, least recently used first.
_EXECUTABLES: collections.OrderedDict[Any, Any] = collections.OrderedDict()
_COMPILES = [0]  # Executables compiled so far, by any caller.


def _signature(tree: Any) -> Any:
  """A hashable description of a tree: structure, shapes, dtypes, shardings.

  A JAX array's sharding is part of it (an executable is compiled for its
  inputs' placement); numpy arrays have none.
  """
  leaves, structure = jax.tree.flatten(tree)
  return structure, tuple(
      (tuple(leaf.shape), str(leaf.dtype),
       leaf.sharding if isinstance(leaf, jax.Array) else None)
      for leaf in leaves)


def _correction(task: contract.Task, model: Any) -> Callable:
  """(params, images, reference) -> `task.correct`, pixels made float."""

  def correct(params, images, reference):
    images = pixels.to_float(images)
    if reference is not None:
      reference = pixels.to_float(reference)
    return task.correct(model, params, images, reference=reference)
  return correct


def run(task: contract.Task, model: Any, params: Any, images: Any,
        reference: Any = None) -> tuple[jax.Array, bool]:
  """`task.correct(model, params, images, reference=reference)`, compiled.

  Args:
    task: the method.
    model: its network.
    params: the params `correct` runs with.
    images: NHWC uint8, uint16 or float32 in [0, 1] (numpy or JAX).
    reference: 1HWC or NHWC pixels alike for methods that take one, else
      None.

  Returns:
    (the corrected images as a JAX array, whether this call compiled).
  """
  key = (task, model, _signature(params), _signature(images),
         _signature(reference))
  compiled_now = key not in _EXECUTABLES
  if compiled_now:
    _EXECUTABLES[key] = jax.jit(_correction(task, model)).lower(
        params, images, reference).compile()
    _COMPILES[0] += 1
    if len(_EXECUTABLES) > MAX_COMPILED:
      _EXECUTABLES.popitem(last=False)
  else:
    _EXECUTABLES.move_to_end(key)
  return _EXECUTABLES[key](params, images, reference), compiled_now


def compile_count() -> int:
  """How many executables `run` has compiled in this process."""
  return _COMPILES[0]


def clear() -> None:
  """Forgets every executable (the next `run` of each compiles again)."""
  _EXECUTABLES.clear()

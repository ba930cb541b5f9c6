"""Pixel conversion: the one place where integer pixels become floats and back.

Images are stored and decoded as uint8 or uint16 RGB, models compute on
float32 in [0, 1], and metrics, summaries and written files take uint8 (or
uint16) again. Every conversion in the project goes through this module, so
there is one rule for each direction:

- integers -> float: divide by the dtype's maximum (255 or 65535); float
  images pass through as float32. Works on numpy arrays and on JAX arrays
  (also inside `jax.jit`), so integer batches can cross to a device at their
  storage size and be converted there.
- float -> integers: clip to [0, 1], scale by the dtype's maximum and ROUND to
  the nearest integer. Integer inputs of another depth go through float first
  (uint16 -> uint8 rounds; it never truncates with a shift).

The one exception is explicit: `truncate=True` floors instead of rounding, as
the official UEC evaluation (protocol 'uec256') does, so its figures stay
comparable with the paper's.
"""

from typing import Any

import numpy as np

# The largest value of each integer pixel type, i.e. what 1.0 maps to.
INTEGER_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def is_integer_pixels(dtype: Any) -> bool:
  """True for the stored pixel types (uint8, uint16)."""
  return np.dtype(dtype) in INTEGER_SCALES


def to_float(image: Any) -> Any:
  """uint8/uint16 -> float32 in [0, 1]; float images -> float32 as they are.

  `image` is a numpy array or a JAX array (traced or not); the result is of
  the same kind.
  """
  scale = INTEGER_SCALES.get(np.dtype(image.dtype))
  if scale is None:
    return image.astype(np.float32)
  return image.astype(np.float32) / scale


def to_integer(image: np.ndarray, dtype: Any = np.uint8, *,
               truncate: bool = False) -> np.ndarray:
  """A numpy image as `dtype` (uint8 or uint16) pixels, by the module's rule.

  Args:
    image: uint8, uint16 or float pixels (floats nominally in [0, 1]; values
      outside are clipped).
    dtype: np.uint8 or np.uint16.
    truncate: floor instead of rounding (only for protocols that define it so).

  Returns:
    The image itself when it already has `dtype`, else a converted copy.
  """
  dtype = np.dtype(dtype)
  if dtype not in INTEGER_SCALES:
    raise ValueError(f'Pixels convert to uint8 or uint16, not {dtype}.')
  image = np.asarray(image)
  if image.dtype == dtype:
    return image
  if is_integer_pixels(image.dtype):
    image = to_float(image)
  scaled = np.clip(image, 0.0, 1.0) * INTEGER_SCALES[dtype]
  return (np.floor(scaled) if truncate else np.round(scaled)).astype(dtype)


def to_uint8(image: np.ndarray, *, truncate: bool = False) -> np.ndarray:
  """`to_integer(image, np.uint8)`: for metrics, summaries and 8-bit files."""
  return to_integer(image, np.uint8, truncate=truncate)

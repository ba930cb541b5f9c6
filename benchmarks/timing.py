"""What the benchmark scripts share: sizes, timing, the matmul peak, machine.

The scripts run as `python benchmarks/<name>.py`, so this folder is on
sys.path and they `import timing`.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

NAMED_SIZES = {'1080p': (1080, 1920), '4k': (2160, 3840)}


def parse_size(text: str) -> tuple[int, int]:
  """'1080p', '4k' or 'HxW' -> (height, width)."""
  if text.lower() in NAMED_SIZES:
    return NAMED_SIZES[text.lower()]
  height, width = text.lower().split('x')
  return int(height), int(width)


def seconds(function, *args) -> float:
  """Wall seconds of one call, waiting for its device results."""
  start = time.perf_counter()
  jax.block_until_ready(function(*args))
  return time.perf_counter() - start


def make_peak(size: int, dtype=jnp.float32):
  """(function, operands, FLOPs) of the N x N peak matmul, at HIGHEST."""
  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.random((size, size), np.float32), dtype)
  b = jnp.asarray(rng.random((size, size), np.float32), dtype)
  matmul = jax.jit(lambda a, b: jnp.dot(
      a, b, precision=jax.lax.Precision.HIGHEST))
  return matmul, (a, b), 2 * size**3


def describe_machine() -> str:
  """Device, threads, jax version, XLA_FLAGS and the load, for the log."""
  device = jax.devices()[0]
  threads = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
             else os.cpu_count())
  load = ' '.join(f'{x:.2f}' for x in os.getloadavg())
  return (f'device: {device.platform} {device.device_kind} '
          f'(x{jax.device_count()}), CPU threads available: {threads}, '
          f'jax {jax.__version__}, XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}'
          f'\nload average at start: {load}')

r"""UEC training throughput (images/s) of the real train step.

  python benchmarks/uec_train.py [--configs=default,runlocal] \
      [--batch_size=8] [--steps=5] [--rounds=3]

Builds the step as training does (`train.make_mesh`, `init_state`,
`make_train_step` with configs/uec.py) on JAX's default devices (CPU, GPU or
TPU) and feeds it a fixed synthetic uint8 batch already on the device, so
the figure is the step alone, not the input pipeline. Per config it compares

  naive: `UEC(pixel_tile='off')`, the layer-by-layer corrector;
  fast: `UEC()`, the default (tiles on a CPU, see models/uec.py);

in alternating rounds of --steps steps each (after a compiling warm-up), and
prints the median images/s and the ratio. One step runs the loss on the
batch: three passes towards the target plus two single passes (sharing h of
the input, see `UEC.training_outputs`), and their gradients.

'default' is configs/uec.py (448 x 448 crops, encoder height 256); 'runlocal'
is its CPU-sized variant (128 x 128 crops, encoder height 128). --batch_size
overrides the configs' batch sizes (8 by default, the default config's).
"""

import os
import pathlib
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

from expcorr_jax import config_args
from expcorr_jax import train
from expcorr_jax.tasks import uec as uec_task

_CONFIGS = flags.DEFINE_list('configs', ['default', 'runlocal'],
                             'configs/uec.py variants: default, runlocal.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8,
                                   "Batch size (0: the config's own).",
                                   lower_bound=0)
_STEPS = flags.DEFINE_integer('steps', 5, 'Steps per timed round.',
                              lower_bound=1)
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds per variant.',
                               lower_bound=1)
_VARIANTS = flags.DEFINE_list('variants', ['naive', 'fast'],
                              "naive (pixel_tile='off'), fast (the default) "
                              'or a tile size in pixels.')

CONFIG_FILE = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'uec.py'


def get_config(name: str):
  config = config_args.load_config(CONFIG_FILE,
                                   None if name == 'default' else name)
  if _BATCH_SIZE.value:
    config.batch_size = _BATCH_SIZE.value
  return config


def pixel_tile(variant: str):
  return {'naive': 'off', 'fast': 'auto'}.get(variant) or int(variant)


def synthetic_batch(config, mesh):
  rng = np.random.default_rng(0)
  shape = (config.batch_size, config.data.crop_size, config.data.crop_size, 3)
  # Smooth images (upsampled noise), so that lambdas and clamps are typical.
  small = rng.integers(0, 256, (4,) + shape[:1] + (8, 8, 3), dtype=np.uint8)
  repeat = -(-shape[1] // 8)
  images = small.repeat(repeat, axis=2).repeat(repeat, axis=3)
  images = images[:, :, :shape[1], :shape[2]]
  names = ('input', 'target', 'ref_lo', 'ref_hi')
  return train.make_global_batch(dict(zip(names, images)), mesh)


def make_runner(config, variant, mesh, batch):
  """A function running --steps steps and returning their seconds."""
  model = uec_task.create_model(config).clone(pixel_tile=pixel_tile(variant))
  optimizer = train.make_optimizer(config)
  state = train.init_state(model, config, optimizer, mesh)
  step = train.make_train_step(model, config, optimizer, mesh)
  state, metrics = step(state, batch)  # Compiles.
  jax.block_until_ready(metrics)
  box = [state]

  def run() -> float:
    start = time.perf_counter()
    state = box[0]
    for _ in range(_STEPS.value):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    box[0] = state
    return time.perf_counter() - start
  return run


def main(argv):
  del argv
  device = jax.devices()[0]
  print(f'device: {device.platform} {device.device_kind} '
        f'(x{jax.device_count()}), CPU threads available: '
        f'{len(os.sched_getaffinity(0))}, jax {jax.__version__}, '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
  print('load average at start: ' +
        ' '.join(f'{x:.2f}' for x in os.getloadavg()))
  print(' '.join(['python'] + sys.argv))
  mesh = train.make_mesh()
  rows = []
  for name in _CONFIGS.value:
    config = get_config(name)
    batch = synthetic_batch(config, mesh)
    runners = {v: make_runner(config, v, mesh, batch)
               for v in _VARIANTS.value}
    rates = {v: [] for v in runners}
    for _ in range(_ROUNDS.value):
      for variant, run in runners.items():
        rates[variant].append(_STEPS.value * config.batch_size / run())
    base = statistics.median(rates[_VARIANTS.value[0]])
    for variant in runners:
      rate = statistics.median(rates[variant])
      rows.append((name, config, variant, rate, max(rates[variant]),
                   rate / base, os.getloadavg()[0]))
  print()
  print(f'| config | crop | encoder height | batch | variant | images/s '
        f'(median) | best | vs {_VARIANTS.value[0]} | load 1 min |')
  print('|---|---:|---:|---:|---|---:|---:|---:|---:|')
  for name, config, variant, rate, best, ratio, load in rows:
    print(f'| {name} | {config.data.crop_size} | '
          f'{config.model_encoder_height} | {config.batch_size} | {variant} | '
          f'{rate:.2f} | {best:.2f} | {ratio:.2f}x | {load:.2f} |')
  print(f'\n{_ROUNDS.value} rounds of {_STEPS.value} steps per variant, '
        'alternating; synthetic uint8 batch on the device.')
  print('load average at end: ' +
        ' '.join(f'{x:.2f}' for x in os.getloadavg()))


if __name__ == '__main__':
  app.run(main)

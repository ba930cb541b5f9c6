"""What the UEC sampler and a short training run give on the embedded sample.

`tests/data/uec_sample_golden.json` holds these figures as the scene-record
layout (multi_exposure 1.1.0, whole encoded frames) gave them, made by
`tests/data/make_uec_sample_golden.py` before the tiled layout (2.0.0)
existed; tests/test_tiled_frames.py recomputes them on the current layout
and requires the same samples, bit for bit, and the same loss curve.
"""

import hashlib
import pathlib
from typing import Any

import numpy as np

from data_prep import build
from expcorr_jax import config_args
from expcorr_jax import train
from expcorr_jax.tasks import uec as uec_task

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = pathlib.Path(__file__).parent / 'data' / 'uec_sample_golden.json'
# Loader settings: (crop_size, flip, with_normal, resize_to, seed). The
# 448 crop upscales the sample's 640-pixel-long frames' short side; the
# resize is the official radiometry transform.
LOADER_SETTINGS = (
    (32, True, False, None, 0),
    (200, True, True, None, 1),
    (300, False, False, None, 2),
    (448, True, False, None, 3),
    (64, True, False, 448, 4),
)
BATCHES = 3
BATCH_SIZE = 4
TRAIN_STEPS = 8


def _digest(array: np.ndarray) -> str:
  array = np.ascontiguousarray(array)
  return hashlib.sha256(
      f'{array.dtype}{array.shape}'.encode() + array.tobytes()).hexdigest()[:24]


def loader_digests(data_dir: str) -> dict[str, list[dict[str, str]]]:
  """Per setting, per batch: field -> digest of the batch's array."""
  source = build.data_source('multi_exposure/sample', 'train', data_dir)
  found = {}
  for crop, flip, with_normal, resize_to, seed in LOADER_SETTINGS:
    loader = uec_task.train_loader(
        source, crop_size=crop, flip=flip, with_normal=with_normal,
        resize_to=resize_to, global_batch_size=BATCH_SIZE, seed=seed)
    batches = []
    for _, batch in zip(range(BATCHES), iter(loader)):
      batches.append({key: _digest(value)
                      for key, value in sorted(batch.items())})
    found[f'crop={crop},flip={flip},normal={with_normal},'
          f'resize_to={resize_to},seed={seed}'] = batches
  return found


def tiny_config(data_dir: str):
  config = config_args.load_config(REPO_ROOT / 'configs' / 'uec.py',
                                   'runlocal')
  config.data.data_dir = data_dir
  config.data.crop_size = 64
  config.batch_size = 8
  config.model_encoder_height = 32
  config.num_train_steps = TRAIN_STEPS
  config.log_every_steps = 1
  config.checkpoint_every_steps = TRAIN_STEPS
  config.eval_every_steps = 1000
  config.eval.max_images = 1
  config.eval.protocols = ('full',)
  config.eval.num_grid_images = 1
  return config


def training_losses(data_dir: str, workdir: str) -> list[float]:
  """train/loss at every step of a short run (from its event file)."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(tiny_config(data_dir), workdir)
  losses = {}
  for events in sorted(pathlib.Path(workdir).glob('events.out.tfevents.*')):
    for event in event_file_loader.EventFileLoader(str(events)).Load():
      for value in event.summary.value:
        if value.tag == 'train/loss':
          losses[event.step] = float(
              np.frombuffer(value.tensor.tensor_content, np.float32)[0]
              if value.tensor.tensor_content else value.tensor.float_val[0])
  return [losses[step] for step in sorted(losses)]


def figures(data_dir: str, workdir: str) -> dict[str, Any]:
  return {'loader': loader_digests(data_dir),
          'losses': training_losses(data_dir, workdir)}

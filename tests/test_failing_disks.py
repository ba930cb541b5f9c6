"""Failing disks and corrupt checkpoints: named, and nothing good is lost.

- A checkpoint save that fails with ENOSPC (the writer patched to raise, as
  a read-only directory does not stop root, which CI runs as) stops training
  with an error naming the directory and the cause; the last good
  checkpoint stays restorable and a rerun resumes from it.
- A checkpoint holding a NaN weight is refused when training restores it,
  naming the step folder and the parameter.
"""

import errno
import os
import pathlib

import numpy as np
import orbax.checkpoint as ocp
import pytest

import tree_assertions  # tests/ is on sys.path.
from expcorr_jax import checkpointing
from expcorr_jax import config_args
from expcorr_jax import train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tiny_config(data_dir, steps):
  config = config_args.load_config(REPO_ROOT / 'configs' / 'uec.py',
                                   'runlocal')
  config.data.data_dir = data_dir
  config.data.crop_size = 32
  config.batch_size = 8  # tests/conftest.py simulates 8 devices.
  config.model_encoder_height = 32
  config.num_train_steps = steps
  config.log_every_steps = config.checkpoint_every_steps = 2
  config.eval_every_steps = 1000
  config.eval.max_images = 1
  config.eval.protocols = ('full',)
  config.eval.num_grid_images = 0
  return config


def test_a_full_disk_stops_training_naming_the_path_and_keeps_the_last_step(
    sample_data_dir, tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  train.train_and_evaluate(_tiny_config(sample_data_dir, 2), str(workdir))
  good, _, step = checkpointing.load_params(str(workdir))
  assert step == 2

  real_save = ocp.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access

  def disk_full(self, item, directory):
    del self, item
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

  monkeypatch.setattr(ocp.JsonCheckpointHandler, '_save_fn', disk_full)
  with pytest.raises(checkpointing.CheckpointSaveError) as error:
    train.train_and_evaluate(_tiny_config(sample_data_dir, 4), str(workdir))
  message = str(error.value)
  assert str(workdir / 'checkpoints') in message
  assert 'No space left on device' in message
  assert 'step 2, is intact' in message
  assert error.value.errno == errno.ENOSPC

  # Step 2 is still the latest complete checkpoint, unchanged...
  params, _, step = checkpointing.load_params(str(workdir))
  assert step == 2
  tree_assertions.assert_trees_equal(params, good)
  # ...and once the disk has room again, the same command resumes from it.
  monkeypatch.setattr(ocp.JsonCheckpointHandler, '_save_fn', real_save)
  train.train_and_evaluate(_tiny_config(sample_data_dir, 4), str(workdir))
  assert checkpointing.load_params(str(workdir))[2] == 4


def test_a_non_finite_checkpoint_is_refused_on_restore(sample_data_dir,
                                                        tmp_path):
  config = _tiny_config(sample_data_dir, 2)
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir))
  # Rewrite step 2's state with one NaN weight, as a diverged run would.
  manager = checkpointing.create_manager(str(workdir), keep=3)
  state = manager.restore(2, args=ocp.args.Composite(
      state=ocp.args.StandardRestore())).state
  kernel = np.array(state['params']['predictor']['fc4']['bias'])
  kernel[0] = np.nan
  state['params']['predictor']['fc4']['bias'] = kernel
  manager.save(3, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(config.to_dict())), force=True)
  manager.wait_until_finished()
  manager.close()
  with pytest.raises(ValueError, match=r"checkpoints/3 holds NaN or infinite "
                     r"weights at \['predictor'\]\['fc4'\]"
                     r"\['bias'\]"):
    train.train_and_evaluate(_tiny_config(sample_data_dir, 4), str(workdir))
  with pytest.raises(ValueError, match=r'checkpoints/3 holds NaN'):
    checkpointing.load_params(str(workdir))

"""The base config: every method's config extends it, and nothing changed.

`tests/data/configs_before_base_config.json` holds `get_config(arg).to_dict()`
of every config file and argument as the files were before they extended
`base_config` (written once from that code): each must still give exactly
that config, so every existing command line keeps working, and a workdir
saved before the change (its config is one of these) still loads.
"""

import json
import pathlib

import jax
import ml_collections
import numpy as np
import pytest

import checkpoint_writer  # tests/ is on sys.path.
from expcorr_jax import base_config
from expcorr_jax import config_args
from expcorr_jax import inference
from expcorr_jax import model_loading
from expcorr_jax import train
from expcorr_jax.tasks import uec as uec_task

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_BEFORE = json.loads((REPO_ROOT / 'tests' / 'data' /
                      'configs_before_base_config.json').read_text())
# Keys added to a config file since (new settings, defaults that change
# nothing): (file, or '*' for every file, dotted key) -> default.
_ADDED_SINCE = {('configs/uec.py', 'data.resize_to'): None,
                ('*', 'workdir_lease_stale_s'): 300}


def _as_json(config: ml_collections.ConfigDict):
  return json.loads(json.dumps(config.to_dict(), default=str))


@pytest.mark.parametrize('command_line', sorted(_BEFORE))
def test_every_config_is_what_it_was_before_the_base_config(command_line):
  path, _, arg = command_line.partition(':')
  config = config_args.load_config(REPO_ROOT / path, arg or None)
  now = _as_json(config)
  for (added_to, key), default in _ADDED_SINCE.items():
    if added_to in (path, '*'):
      parent, _, name = key.rpartition('.')
      node = now[parent] if parent else now
      assert node.pop(name) == default, key
  assert now == _BEFORE[command_line]
  assert train.missing_keys(config) == []


def test_method_configs_hold_only_their_own_lines():
  """No method config repeats a base assignment with the base's value."""
  base = base_config.get_config()
  for path in sorted((REPO_ROOT / 'configs').glob('*.py')):
    text = path.read_text()
    assert 'base_config.get_config(' in text or 'pretext_config(' in text, (
        path)
    for key in base_config.required_keys():
      value = base[key.split('.')[0]] if '.' not in key else (
          base[key.split('.')[0]][key.split('.')[1]])
      if value is None or isinstance(value, (tuple, bool)):
        continue
      assert f'config.{key} = {value!r}' not in text, (path, key)


def test_required_keys_are_the_base_configs_leaves():
  keys = base_config.required_keys()
  assert 'model' in keys and 'data.data_dir' in keys
  assert 'optimizer.decay_steps' in keys and 'eval.protocols' in keys
  assert len(keys) == len(set(keys))
  config = base_config.get_config()
  assert train.missing_keys(config) == []
  del config.eval['num_grid_images']
  assert train.missing_keys(config) == ['eval.num_grid_images']
  # Each command-line override of a base key still type-checks: data_dir
  # and manual_dir take strings though they default to None.
  config = base_config.get_config()
  config.data.data_dir = '/tmp/x'
  with pytest.raises(TypeError):
    config.data.data_dir = 3


def test_a_workdir_saved_before_the_base_config_still_loads(tmp_path):
  saved = _BEFORE['configs/uec.py:runlocal']
  model = uec_task.create_model(ml_collections.ConfigDict(saved))
  params = jax.tree.map(np.asarray, uec_task.init_params(
      model, jax.random.key(0)))
  checkpoint_writer.write_params_checkpoint(tmp_path / 'old', params, saved,
                                            step=200)
  loaded = model_loading.load(tmp_path / 'old')
  assert loaded.task.name == 'uec' and loaded.model.encoder_height == 128
  assert loaded.facts['checkpoint_step'] == 200
  jax.tree.map(np.testing.assert_array_equal, loaded.params, params)
  corrector = inference.Corrector.from_checkpoint(tmp_path / 'old')
  assert corrector.model_name == 'uec'
  # Its saved config is a complete config for today's trainer, apart from
  # the shared keys added since.
  assert train.missing_keys(ml_collections.ConfigDict(saved)) == [
      key for added_to, key in _ADDED_SINCE if added_to == '*']

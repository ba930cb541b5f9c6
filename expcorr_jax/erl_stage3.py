"""ERL stage 3: the sample-relationship regulariser as a switch for any task.

"Learning Sample Relationship for Exposure Correction" (CVPR 2023, Sec. 3.3)
trains an exposure corrector with L = L_c + alpha * L_r, where
L_r = L1(t_e(f_e(output)), t_e(f_e(target))) runs the frozen batch-correlation
module (BCM) of stages 1 and 2 (configs/erl_autoencoder.py, configs/erl_bcm.py)
and alpha = 0.1. Nothing changes at inference: the BCM's params never enter
the corrector's train state or checkpoint.

A task supports it with four calls (uec_task.py and recnet_task.py do):

  config.erl = erl_stage3.config_block()     # in the method's config, off
  erl_stage3.validate_config(config)         # in validate_config
  frozen = erl_stage3.wrap_frozen(config, own_frozen)        # load_frozen
  own_frozen, bcm = erl_stage3.unwrap_frozen(config, frozen)  # loss_fn, then
  loss, metrics = erl_stage3.add_regulariser(config, bcm, loss, metrics,
                                             output, target)

With ERL off (or a config without an `erl` block) `wrap_frozen` returns the
task's own frozen params unchanged and the loss is untouched; with it on, the
trainer's `frozen` is {'task': own frozen params, 'erl': the BCM's
{'encoder', 'transformer'}}. The BCM reaches the loss as an argument and
`erl.regulariser` stops its gradient: only the corrector trains.
"""

import importlib.util
import os
from typing import Any

from absl import logging
import jax
import ml_collections

from expcorr_jax.models import erl

ERL_WEIGHT = 0.1  # The paper's alpha.


def config_block() -> ml_collections.ConfigDict:
  """`config.erl` for a corrector's config; off by default.

  Fields:
    enabled: add the regulariser to the loss.
    bcm_workdir: the workdir of a stage-2 run (configs/erl_bcm.py), or one of
      its step folders; an absolute path (the stage-2 checkpoint names its
      stage-1 workdir in turn).
    weight: alpha, the paper's 0.1.
    batch_attention: 'global' (t_e attends over the whole batch, as on the
      paper's single GPU) or 'per_device' (each device's share only), as in
      stage 2.
  """
  block = ml_collections.ConfigDict()
  block.enabled = False
  block.bcm_workdir = ml_collections.FieldReference(None, field_type=str)
  block.weight = ERL_WEIGHT
  block.batch_attention = 'global'
  return block


def base_config_with_erl(config_file: str, base_name: str,
                         arg: str | None) -> ml_collections.ConfigDict:
  """configs/<base_name>.py's config for `arg`, with ERL switched on.

  For the `<method>_erl.py` configs: `config_file` is the calling config's
  `__file__`, whose folder holds the base config (loaded by path: configs is
  no package). erl.bcm_workdir stays to be set on the command line.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)),
                      f'{base_name}.py')
  spec = importlib.util.spec_from_file_location(f'_base_{base_name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.erl.enabled = True
  return config


def enabled(config: ml_collections.ConfigDict) -> bool:
  block = config.get('erl')
  return bool(block is not None and block.get('enabled', False))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the `erl` block; when on, that the BCM checkpoint loads."""
  if not enabled(config):
    return
  block = config.erl
  if not block.weight > 0:
    raise ValueError(f'config.erl.weight must be positive (the paper uses '
                     f'{ERL_WEIGHT}), got {block.weight!r}; set '
                     'config.erl.enabled=False to train without ERL.')
  if block.batch_attention not in erl.BATCH_ATTENTION_MODES:
    raise ValueError(f'config.erl.batch_attention must be one of '
                     f'{erl.BATCH_ATTENTION_MODES}, got '
                     f'{block.batch_attention!r}.')
  per_device = config.batch_size // jax.device_count()
  if config.batch_size == 1 or (block.batch_attention == 'per_device' and
                                per_device == 1):
    logging.warning(
        'ERL with one image per batch (or per device): t_e relates nothing. '
        'The paper found batch 4 best.')
  load_bcm(config)  # Fails early, naming the missing or wrong checkpoint.


def load_bcm(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The frozen BCM params of `config.erl.bcm_workdir` (see erl_task)."""
  from expcorr_jax import erl_task  # pylint: disable=g-import-not-at-top
  return erl_task.load_bcm(config.erl.bcm_workdir)


def wrap_frozen(config: ml_collections.ConfigDict, task_frozen: Any) -> Any:
  """The task's frozen params, plus the BCM's when ERL is on."""
  if not enabled(config):
    return task_frozen
  return {'task': task_frozen, 'erl': load_bcm(config)}


def unwrap_frozen(config: ml_collections.ConfigDict,
                  frozen: Any) -> tuple[Any, Any]:
  """(the task's own frozen params, the BCM's or None) of `wrap_frozen`."""
  if not enabled(config):
    return frozen, None
  if not isinstance(frozen, dict) or set(frozen) != {'task', 'erl'}:
    raise ValueError(
        'config.erl.enabled is set but the frozen params lack the BCM: pass '
        "frozen=<task>.load_frozen(config), which adds it under 'erl'.")
  return frozen['task'], frozen['erl']


def add_regulariser(config: ml_collections.ConfigDict, bcm: Any,
                    loss: jax.Array, metrics: dict[str, jax.Array],
                    output: jax.Array, target: jax.Array
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """loss + weight * L_r(output, target), with L_r logged as 'erl'.

  Returns (loss, metrics) unchanged when ERL is off. `metrics['loss']`, if
  present, is updated to the new total.
  """
  if not enabled(config):
    return loss, metrics
  value = erl.regulariser(bcm, output, target,
                          mode=config.erl.batch_attention)
  loss = loss + config.erl.weight * value
  metrics = dict(metrics, erl=value)
  if 'loss' in metrics:
    metrics['loss'] = loss
  return loss, metrics

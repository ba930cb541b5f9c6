"""ERL stage 3: the sample-relationship regulariser, for any corrector.

"Learning Sample Relationship for Exposure Correction" (CVPR 2023, Sec. 3.3)
trains an exposure corrector with L = L_c + alpha * L_r, where
L_r = L1(t_e(f_e(output)), t_e(f_e(target))) runs the frozen batch-correlation
module (BCM) of stages 1 and 2 (tasks/erl_autoencoder.py, tasks/erl_bcm.py)
and alpha = 0.1. It needs (`TrainingNeeds.normal_exposure_pair`) the
corrector's output against a normal-exposure ground truth, which the
corrector's task returns in its `LossOutput` (UEC: the input corrected
towards its scene's EV 0 frame, and that frame; RECNet: its output and the
pair's target).

A corrector's config switches it on with the `erl` config argument
(`configs/uec.py:erl`, `configs/recnet.py:runlocal,erl`), which adds
`config.regulariser = config_block()`; the trainer finds this module by
`config.regulariser.name` ('erl'), adds weight * L_r to the loss and logs it
as 'erl', beside 'erl_cross_sample' (how much the other outputs' F' move
when output 0 of the batch is replaced: the batch relationship at work).
The BCM's params reach the loss as frozen params (never trained:
`erl.regulariser` stops their gradient), never enter the corrector's train
state or checkpoint, and inference is unchanged.
"""

from typing import Any

from absl import logging
import jax
import ml_collections

from expcorr_jax.models import erl
from expcorr_jax.tasks import contract
from expcorr_jax.tasks import erl_pretext

ERL_WEIGHT = 0.1  # The paper's alpha.


def config_block() -> ml_collections.ConfigDict:
  """`config.regulariser` for ERL stage 3.

  Fields:
    name: 'erl' (this module).
    bcm_workdir: the workdir of a stage-2 run (configs/erl_bcm.py), or one of
      its step folders; an absolute path (the stage-2 checkpoint names its
      stage-1 workdir in turn). Required.
    weight: alpha, the paper's 0.1.
    batch_attention: 'global' (t_e attends over the whole batch, as on the
      paper's single GPU), 'per_device' (each device's share only), as in
      stage 2, or 'per_sample' (each output alone through the same t_e:
      the control arm, the same pull towards the target with no
      relationship between samples).
  """
  block = ml_collections.ConfigDict()
  block.name = 'erl'
  block.bcm_workdir = ml_collections.FieldReference(None, field_type=str)
  block.weight = ERL_WEIGHT
  block.batch_attention = 'global'
  return block


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks `config.regulariser`, and that its BCM checkpoint (and the
  stage-1 one it names) exist and are what they should be, reading their
  saved configs only: the params load once, in `load_frozen`."""
  block = config.regulariser
  if not block.weight > 0:
    raise ValueError(f'config.regulariser.weight must be positive (the paper '
                     f'uses {ERL_WEIGHT}), got {block.weight!r}; drop the '
                     '`erl` config argument to train without ERL.')
  if block.batch_attention not in erl.BATCH_ATTENTION_MODES:
    raise ValueError(f'config.regulariser.batch_attention must be one of '
                     f'{erl.BATCH_ATTENTION_MODES}, got '
                     f'{block.batch_attention!r}.')
  per_device = config.batch_size // jax.device_count()
  if block.batch_attention == 'per_sample':
    logging.warning(
        "ERL with batch_attention='per_sample': t_e sees each output alone, "
        'so no sample relationship is learnt from (the control arm).')
  elif config.batch_size == 1 or (block.batch_attention == 'per_device' and
                                  per_device == 1):
    logging.warning(
        'ERL with one image per batch (or per device): t_e relates nothing. '
        'The paper found batch 4 best.')
  erl_pretext.check_bcm(block.bcm_workdir)


def load_frozen(block: ml_collections.ConfigDict) -> dict[str, Any]:
  """The BCM's {'encoder', 'transformer'} of `block.bcm_workdir`."""
  return erl_pretext.load_bcm(block.bcm_workdir)


def loss(block: ml_collections.ConfigDict, bcm: Any, output: jax.Array,
         target: jax.Array) -> jax.Array:
  """L_r(output, target) with the frozen BCM."""
  return erl.regulariser(bcm, output, target, mode=block.batch_attention)


def metrics(block: ml_collections.ConfigDict, bcm: Any, output: jax.Array,
            target: jax.Array) -> dict[str, jax.Array]:
  """'cross_sample': how much the other outputs' F' move when output 0 is
  replaced (`erl.cross_sample_shift`): 0 under 'per_sample' attention."""
  del target
  model = erl.model_from_params(bcm)
  return {'cross_sample': erl.cross_sample_shift(
      lambda images: erl.relationship_features(
          bcm, images, mode=block.batch_attention, model=model), output)}


REGULARISER = contract.Regulariser(
    name='erl',
    # L_r compares a corrected output with its normal-exposure ground truth.
    needs=contract.TrainingNeeds(normal_exposure_pair=True),
    validate_config=validate_config, load_frozen=load_frozen, loss=loss,
    metrics=metrics)

"""ERL's pretext stages: what the two BCM tasks share.

ERL ("Learning Sample Relationship for Exposure Correction", CVPR 2023)
trains its batch-correlation module (BCM, models/erl.py) in two stages
before a third stage uses it as a loss term. The paper trains stage 2 on
normal-exposure images and calls stage 1 a "self-reconstruction" without
naming its data; training stage 1 on the same normal-exposure images is
this project's choice.

- 'erl_autoencoder' (stage 1, tasks/erl_autoencoder.py): f_e and f_d learn
  to reconstruct their input, L1(f_d(f_e(I)), I) (L1: this project's
  choice).
- 'erl_bcm' (stage 2, tasks/erl_bcm.py): f_e, f_d are loaded frozen from the
  stage-1 workdir (`config.erl.autoencoder_workdir`); t_e is trained (W too
  in this project's variant) with the phase loss, pixel L1 or no loss
  (Table 2's arms, `config.loss.pretext`).
- Stage 3 (tasks/erl.py, the regulariser for any corrector): `load_bcm`
  gives the frozen params for `erl.regulariser`.

"Normal exposure" is the EV `config.data.normal_ev` (0) frame of each scene of
a multi-exposure dataset, or the target of each pair of a paired one
(`NormalExposureSample`).

Evaluation has one protocol, 'reconstruction' (`RECONSTRUCTION`): the model
reconstructs the evaluation pair's target (stage 1: f_d(f_e(I)); stage 2: I',
the image alone in its batch), scored against that target. The pair's
exposure input is shown only in the grid and the identity columns; the model
never sees it.
"""

import dataclasses
from typing import Any

from absl import logging
import grain
import ml_collections
import numpy as np

from expcorr_jax import checkpointing
from expcorr_jax import input_pipeline
from expcorr_jax import pixels
from expcorr_jax.models import erl
from expcorr_jax.tasks import contract

AUTOENCODER = 'erl_autoencoder'
BCM_MODEL = 'erl_bcm'
# Table 2's arms: the Fourier-phase pretext (the paper's), pixel L1, and
# none (t_e stays at its random initialisation).
PRETEXT_LOSSES = ('phase', 'l1', 'none')
# Fields of config.erl that fix the shapes of f_e and f_d (stage 1's params).
_CONV_FIELDS = ('features', 'encoder_layers', 'decoder_layers')
_TRANSFORMER_FIELDS = ('token_size', 'transformer_layers', 'num_heads',
                       'mlp_dim')


def _train_command(model: str, workdir: str) -> str:
  command = (f'python -m expcorr_jax.main --config=configs/{model}.py '
             f'--workdir={workdir}')
  if model == BCM_MODEL:
    command += ' --config.erl.autoencoder_workdir=<stage-1 workdir>'
  return command


def _model_from(erl_config: Any) -> erl.BCM:
  """The BCM described by a config's `erl` block (ConfigDict or dict)."""
  fields = {k: erl_config[k] for k in _CONV_FIELDS + _TRANSFORMER_FIELDS
            if k in erl_config}
  return erl.BCM(**fields)


def validate_widths(config: ml_collections.ConfigDict) -> None:
  """Checks the widths of f_e and f_d (both stages)."""
  for name in _CONV_FIELDS:
    if config.erl[name] < 1:
      raise ValueError(f'config.erl.{name} must be at least 1.')


def create_model(config: ml_collections.ConfigDict) -> erl.BCM:
  return _model_from(config.erl)


@dataclasses.dataclass
class NormalExposureSample(grain.transforms.RandomMap):
  """Record -> {'image': its normal-exposure frame, cropped and flipped}.

  Multi-exposure records give their frame at EV `normal_ev`; paired records
  their target. (The dataclass repr is stable across runs, as grain needs to
  restore a checkpointed iterator.)
  """
  crop_size: int | None
  flip: bool
  normal_ev: float = 0.0

  def random_map(self, record, rng: np.random.Generator) -> dict[str, Any]:
    if 'frames' in record:
      evs = np.asarray(record['evs'], np.float32)
      matches = np.flatnonzero(evs == self.normal_ev)
      if not len(matches):
        raise ValueError(
            f'Scene {record["scene"]!r} has no frame at EV {self.normal_ev} '
            f'(it has {evs.tolist()}); set config.data.normal_ev.')
      encoded = record['frames'][int(matches[0])]
    else:
      encoded = record['target']
    image, = input_pipeline.crop_and_flip(
        [input_pipeline.decode(encoded)], rng, self.crop_size, self.flip)
    return {'image': image}


def make_train_loader(config, train_source, **loader_kwargs):
  return input_pipeline.make_train_loader(
      train_source,
      NormalExposureSample(config.data.crop_size, config.data.flip,
                           config.data.normal_ev), **loader_kwargs)


def _load_stage(workdir: str, model: str, stage: str, noun: str
                ) -> tuple[Any, dict[str, Any], int]:
  """(params, saved config, step) of an ERL stage's checkpoint in `workdir`.

  Raises:
    FileNotFoundError: no checkpoint there; the message gives the command
      that trains one.
    ValueError: it holds another kind of model than `model`.
  """
  try:
    params, saved, step = checkpointing.load_params(workdir)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f'No ERL {stage} ({noun}) checkpoint in {workdir} ({e}). Train it '
        f'first:\n  {_train_command(model, workdir)}') from e
  if saved.get('model') != model:
    raise ValueError(
        f'{workdir} holds a {saved.get("model")!r} checkpoint, not an ERL '
        f'{stage} {noun} ({model!r}). Train one with:\n  '
        f'{_train_command(model, f"<{stage} workdir>")}')
  return params, saved, step


def load_autoencoder(workdir: str | None,
                     erl_config: Any = None) -> dict[str, Any]:
  """Stage 1's {'encoder', 'decoder'} params from a workdir (or step folder).

  Args:
    workdir: the stage-1 training workdir, its checkpoints/ folder or a step
      folder (which pins the step).
    erl_config: if given, f_e/f_d widths it must match.

  Raises:
    FileNotFoundError: no checkpoint there.
    ValueError: not set, not a stage-1 checkpoint, or other widths.
  """
  if not workdir:
    raise ValueError(
        'ERL stage 2 needs the stage-1 auto-encoder: set '
        '--config.erl.autoencoder_workdir to the workdir of a run of\n  '
        + _train_command(AUTOENCODER, '<stage-1 workdir>'))
  params, saved, step = _load_stage(workdir, AUTOENCODER, 'stage-1',
                                    'auto-encoder')
  if erl_config is not None:
    different = {k: (saved['erl'][k], erl_config[k]) for k in _CONV_FIELDS
                 if saved['erl'][k] != erl_config[k]}
    if different:
      raise ValueError(
          f'The stage-1 auto-encoder in {workdir} was trained with other '
          'widths (checkpoint, config): '
          + ', '.join(f'erl.{k}={v}' for k, v in different.items()))
  logging.info('ERL stage-1 auto-encoder: step %d of %s.', step, workdir)
  return {'encoder': params['encoder'], 'decoder': params['decoder']}


def load_bcm(workdir: str | None) -> dict[str, Any]:
  """A trained BCM's {'encoder', 'transformer'} params, for stage 3.

  Reads the stage-2 checkpoint in `workdir` and the stage-1 one its config
  names (the decoder and fusion are dropped: the regulariser never uses
  them). Use as frozen params with `erl.regulariser(params, output, target,
  mode=...)`; `erl.model_from_params(params)` gives the module.

  Raises:
    FileNotFoundError: no checkpoint in `workdir` or in its stage-1 workdir.
    ValueError: `workdir` unset, or it (or its stage 1) holds another kind
      of model.
  """
  if not workdir:
    raise ValueError(
        'ERL stage 3 (the `erl` config argument) needs a trained BCM: set '
        '--config.regulariser.bcm_workdir to the workdir of an ERL stage-2 '
        'run of\n  '
        + _train_command(BCM_MODEL, '<stage-2 workdir>'))
  params, saved, step = _load_stage(workdir, BCM_MODEL, 'stage-2', 'BCM')
  try:
    stage1 = load_autoencoder(saved['erl']['autoencoder_workdir'],
                              saved['erl'])
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f'The ERL BCM in {workdir} reads its f_e from the stage-1 '
                  f'workdir its config names, which failed: {e}') from e
  logging.info('ERL BCM: step %d of %s.', step, workdir)
  return {'encoder': stage1['encoder'], 'transformer': params['transformer']}


def _prepare_reconstruction(pair: input_pipeline.EvalPair,
                            reference: None) -> contract.PreparedPair:
  del reference  # Protocols take one; this one never has any.
  target = pixels.to_uint8(pair.target)
  return contract.PreparedPair(
      model_input=pixels.to_float(target), reference=None,
      shown_input=pixels.to_uint8(pair.input), target=target)


RECONSTRUCTION = contract.Protocol(
    name='reconstruction', prepare=_prepare_reconstruction,
    quantise=pixels.to_uint8, ssim_color='rgb', lpips=False,
    description="the model's reconstruction of the normal-exposure target")

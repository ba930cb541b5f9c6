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

import contextlib
import dataclasses
from typing import Any, Iterator

from absl import logging
import grain
import ml_collections
import numpy as np

from expcorr_jax import base_config
from expcorr_jax import input_pipeline
from expcorr_jax import model_loading
from expcorr_jax import pixels
from expcorr_jax import protocols
from expcorr_jax.models import erl
from expcorr_jax.tasks import contract

AUTOENCODER = 'erl_autoencoder'
BCM_MODEL = 'erl_bcm'
# Table 2's arms: the Fourier-phase pretext (the paper's), pixel L1, and
# none (t_e stays at its random initialisation).
PRETEXT_LOSSES = ('phase', 'l1', 'none')
# Fields of config.erl that fix the shapes of f_e and f_d (stage 1's params).
_CONV_FIELDS = ('features', 'encoder_layers', 'decoder_layers')
RECONSTRUCTION_NAME = 'reconstruction'
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


def pretext_config(runlocal: bool) -> ml_collections.ConfigDict:
  """What both stages' configs share (configs/erl_autoencoder.py and
  configs/erl_bcm.py extend it): the base config with f_e/f_d widths, the
  normal-exposure data, the paper's Adam betas and the 'reconstruction'
  protocol; `runlocal` shrinks crops and evaluation for a CPU."""
  config = base_config.get_config(runlocal=runlocal)
  config.erl = ml_collections.ConfigDict()
  # Must be equal in both stages (checked when stage 2 loads stage 1).
  config.erl.features = 8  # C, the channels of F (full resolution).
  config.erl.encoder_layers = 3  # 3x3 convs in f_e.
  config.erl.decoder_layers = 3  # 3x3 convs in f_d.
  config.data.normal_ev = 0.0  # Multi-exposure data: the frame to learn.
  config.num_train_steps = 50_000
  config.optimizer.b2 = 0.99  # The paper's betas (0.9, 0.99).
  config.eval.protocols = (RECONSTRUCTION_NAME,)
  if runlocal:
    config.data.crop_size = 64
    config.checkpoint_every_steps = 100
    config.eval.max_images = 8
  return config


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
        [input_pipeline.as_frame(encoded)], rng, self.crop_size, self.flip)
    return {'image': image}


def make_train_loader(config: ml_collections.ConfigDict, train_source: Any,
                      needs: contract.TrainingNeeds = contract.NO_NEEDS,
                      **loader_kwargs: Any) -> Any:
  del needs  # Nothing to add: a pretext stage returns no output/target.
  return input_pipeline.make_train_loader(
      train_source,
      NormalExposureSample(config.data.crop_size, config.data.flip,
                           config.data.normal_ev), **loader_kwargs)


_STAGES = {AUTOENCODER: ('stage-1', 'auto-encoder'),
           BCM_MODEL: ('stage-2', 'BCM')}


@contextlib.contextmanager
def _stage_errors(workdir: str, model: str) -> Iterator[None]:
  """Turns the loader's errors for an ERL stage into ones with the fix.

  Raises:
    FileNotFoundError: no checkpoint in `workdir`; the message gives the
      command that trains one.
    ValueError: it holds another kind of model than `model`.
  """
  stage, noun = _STAGES[model]
  try:
    yield
  except model_loading.MethodMismatchError as e:
    raise ValueError(
        f'{workdir} holds a {e.saved!r} checkpoint, not an ERL {stage} {noun} '
        f'({model!r}). Train one with:\n  '
        f'{_train_command(model, f"<{stage} workdir>")}') from e
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f'No ERL {stage} ({noun}) checkpoint in {workdir} ({e}). Train it '
        f'first:\n  {_train_command(model, workdir)}') from e


def _require(workdir: str | None, model: str) -> str:
  """`workdir`, which the config must set; ValueError with the fix if not."""
  if workdir:
    return workdir
  if model == AUTOENCODER:
    raise ValueError(
        'ERL stage 2 needs the stage-1 auto-encoder: set '
        '--config.erl.autoencoder_workdir to the workdir of a run of\n  '
        + _train_command(AUTOENCODER, '<stage-1 workdir>'))
  raise ValueError(
      'ERL stage 3 (the `erl` config argument) needs a trained BCM: set '
      '--config.regulariser.bcm_workdir to the workdir of an ERL stage-2 '
      'run of\n  ' + _train_command(BCM_MODEL, '<stage-2 workdir>'))


def _check_widths(workdir: str, saved_erl: Any, erl_config: Any) -> None:
  """ValueError unless stage 1 in `workdir` has `erl_config`'s widths."""
  if erl_config is None:
    return
  different = {k: (saved_erl[k], erl_config[k]) for k in _CONV_FIELDS
               if saved_erl[k] != erl_config[k]}
  if different:
    raise ValueError(
        f'The stage-1 auto-encoder in {workdir} was trained with other '
        'widths (checkpoint, config): '
        + ', '.join(f'erl.{k}={v}' for k, v in different.items()))


@contextlib.contextmanager
def _reading_stage1_of(workdir: str) -> Iterator[None]:
  """Names the BCM in `workdir` when the stage 1 its config names fails."""
  try:
    yield
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f'The ERL BCM in {workdir} reads its f_e from the stage-1 '
                  f'workdir its config names, which failed: {e}') from e


def check_autoencoder(workdir: str | None, erl_config: Any = None) -> None:
  """`load_autoencoder`'s checks, reading the saved config only."""
  workdir = _require(workdir, AUTOENCODER)
  with _stage_errors(workdir, AUTOENCODER):
    saved, _ = model_loading.saved_config(workdir, model=AUTOENCODER)
  _check_widths(workdir, saved['erl'], erl_config)


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
  workdir = _require(workdir, AUTOENCODER)
  with _stage_errors(workdir, AUTOENCODER):
    loaded = model_loading.load(workdir, model=AUTOENCODER)
  _check_widths(workdir, loaded.config.erl, erl_config)
  logging.info('ERL stage-1 auto-encoder: step %d of %s.',
               loaded.facts['checkpoint_step'], workdir)
  return {'encoder': loaded.params['encoder'],
          'decoder': loaded.params['decoder']}


def check_bcm(workdir: str | None) -> None:
  """`load_bcm`'s checks (both stages), reading saved configs only."""
  workdir = _require(workdir, BCM_MODEL)
  with _stage_errors(workdir, BCM_MODEL):
    saved, _ = model_loading.saved_config(workdir, model=BCM_MODEL)
  with _reading_stage1_of(workdir):
    check_autoencoder(saved['erl']['autoencoder_workdir'], saved['erl'])


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
  workdir = _require(workdir, BCM_MODEL)
  with _stage_errors(workdir, BCM_MODEL):
    loaded = model_loading.load(workdir, model=BCM_MODEL)
  with _reading_stage1_of(workdir):
    stage1 = load_autoencoder(loaded.config.erl.autoencoder_workdir,
                              loaded.config.erl)
  logging.info('ERL BCM: step %d of %s.', loaded.facts['checkpoint_step'],
               workdir)
  return {'encoder': stage1['encoder'],
          'transformer': loaded.params['transformer']}


def _prepare_reconstruction(pair: input_pipeline.EvalPair,
                            reference: np.ndarray | None = None
                            ) -> contract.PreparedPair:
  target = pixels.to_uint8(pair.target)
  return contract.PreparedPair(
      model_input=pixels.to_float(target),
      reference=protocols.model_reference(reference),
      shown_input=pixels.to_uint8(pair.input), target=target)


RECONSTRUCTION = contract.Protocol(
    name=RECONSTRUCTION_NAME, prepare=_prepare_reconstruction,
    quantise=pixels.to_uint8, ssim_color='rgb', lpips=False,
    description="the model's reconstruction of the normal-exposure target")

"""What the trainer needs to know about ERL's two BCM stages.

ERL ("Learning Sample Relationship for Exposure Correction", CVPR 2023)
trains its batch-correlation module (BCM, models/erl.py) in two stages, both
on normal-exposure images only, before a third stage uses it as a loss term:

- 'erl_autoencoder' (stage 1): f_e and f_d learn to reconstruct their input,
  L1(f_d(f_e(I)), I); trained params {'encoder', 'decoder'}.
- 'erl_bcm' (stage 2): f_e, f_d are loaded frozen from the stage-1 workdir
  (`config.erl.autoencoder_workdir`, through `load_frozen`); t_e and the 1x1
  fusion are trained with the phase loss L1(phase(FFT(I)), phase(FFT(I')))
  (or, as the paper's Table 2 ablation, pixel L1); trained params
  {'transformer', 'fusion'}. `config.erl.batch_attention` chooses whether t_e
  attends over the global batch or each device's sub-batch.
- Stage 3 (another method's loss): `load_bcm(workdir)` gives the frozen
  params for `erl.regulariser` / `erl.relationship_features`; a corrector's
  config switches it on with its `config.erl` block (erl_stage3.py).

"Normal exposure" is the EV `config.data.normal_ev` (0) frame of each scene of
a multi-exposure dataset, or the target of each pair of a paired one.

Evaluation has one protocol, 'reconstruction': the model reconstructs the
evaluation pair's target (stage 1: f_d(f_e(I)); stage 2: I', the image alone
in its batch), scored against that target. The pair's exposure input is
returned as the 'input' only for the grid and the identity columns; the model
never sees it.
"""

import dataclasses
import functools
from typing import Any

from absl import logging
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_prep import image_codec
from expcorr_jax import checkpointing
from expcorr_jax import input_pipeline
from expcorr_jax.models import erl

AUTOENCODER = 'erl_autoencoder'
BCM_MODEL = 'erl_bcm'
PROTOCOLS = ('reconstruction',)
PRETEXT_LOSSES = ('phase', 'l1')
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


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the bad value; stage 2 also checks its stage 1."""
  if config.model not in (AUTOENCODER, BCM_MODEL):
    raise ValueError(f'erl_task trains {AUTOENCODER!r} or {BCM_MODEL!r}, not '
                     f'{config.model!r}.')
  unknown = set(config.eval.protocols) - set(PROTOCOLS)
  if unknown:
    raise ValueError(f'Unknown eval protocols {sorted(unknown)}; '
                     f'choose from {PROTOCOLS}.')
  for name in _CONV_FIELDS:
    if config.erl[name] < 1:
      raise ValueError(f'config.erl.{name} must be at least 1.')
  if config.model == AUTOENCODER:
    return
  model = _model_from(config.erl)
  if model.token_dim % config.erl.num_heads:
    raise ValueError(
        f'config.erl.num_heads={config.erl.num_heads} must divide the token '
        f'size token_size^2 * features = {model.token_dim}.')
  if config.erl.batch_attention not in erl.BATCH_ATTENTION_MODES:
    raise ValueError(f'config.erl.batch_attention must be one of '
                     f'{erl.BATCH_ATTENTION_MODES}, got '
                     f'{config.erl.batch_attention!r}.')
  if config.loss.pretext not in PRETEXT_LOSSES:
    raise ValueError(f'config.loss.pretext must be one of {PRETEXT_LOSSES}, '
                     f'got {config.loss.pretext!r}.')
  per_device = config.batch_size // jax.device_count()
  if config.erl.batch_attention == 'per_device' and per_device == 1:
    logging.warning(
        'per_device batch attention with one image per device: each image '
        'attends only to itself. Use a larger batch or batch_attention=global.')
  load_autoencoder(config.erl.autoencoder_workdir, config.erl)


def create_model(config: ml_collections.ConfigDict) -> erl.BCM:
  return _model_from(config.erl)


def init_params(model: erl.BCM, config: ml_collections.ConfigDict,
                rng: jax.Array) -> Any:
  """Fresh trainable params: stage 1 f_e, f_d; stage 2 t_e and the fusion."""
  if config.model == AUTOENCODER:
    images = jnp.zeros((1, 16, 16, 3), jnp.float32)
    return model.init(rng, images, method=erl.BCM.reconstruct)['params']
  tokens = jnp.zeros((2, model.token_dim), jnp.float32)
  stacked = jnp.zeros((1, 1, 1, 2 * model.features), jnp.float32)
  return model.init(
      rng, tokens, stacked,
      method=lambda m, t, f: (m.correlate(t), m.fusion(f)))['params']


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
        'ERL stage 3 (config.erl.enabled) needs a trained BCM: set '
        '--config.erl.bcm_workdir to the workdir of an ERL stage-2 run of\n  '
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


def load_frozen(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """Stage 2: the frozen stage-1 {'encoder', 'decoder'}; stage 1: None."""
  if config.model == AUTOENCODER:
    return None
  return load_autoencoder(config.erl.autoencoder_workdir, config.erl)


def loss_fn(model: erl.BCM, params: Any, batch: dict[str, jax.Array],
            config: ml_collections.ConfigDict, frozen: Any = None):
  """Returns (loss, metrics) for a float batch of normal-exposure 'image's."""
  images = batch['image']
  if config.model == AUTOENCODER:
    reconstructed = model.apply({'params': params}, images,
                                method=erl.BCM.reconstruct)
    l1 = jnp.mean(jnp.abs(reconstructed - images))
    return l1, {'l1': l1, 'loss': l1}
  reconstructed = erl.bcm_reconstruct(
      model, {**frozen, **params}, images, mode=config.erl.batch_attention)
  phase = erl.phase_loss(images, reconstructed)
  l1 = jnp.mean(jnp.abs(reconstructed - images))
  loss = phase if config.loss.pretext == 'phase' else l1
  return loss, {'phase': phase, 'l1': l1, 'loss': loss}


def load_reference(config: ml_collections.ConfigDict) -> None:
  """ERL evaluation uses no reference image."""
  del config


@functools.lru_cache(maxsize=None)
def _jitted_reconstruct(model: erl.BCM, stage2: bool):
  if stage2:
    return jax.jit(lambda p, x: erl.bcm_reconstruct(model, p, x))
  return jax.jit(lambda p, x: model.apply({'params': p}, x,
                                          method=erl.BCM.reconstruct))


def _to_uint8(image: np.ndarray) -> np.ndarray:
  if image.dtype == np.uint8:
    return image
  return np.round(image_codec.to_float(image) * 255).astype(np.uint8)


def eval_pair(model: erl.BCM, params: Any, pair: input_pipeline.EvalPair,
              reference: None, protocol: str, frozen: Any = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reconstructs the pair's target; returns uint8 (input, output, target).

  Stage 2 (params with a 'transformer') also needs `frozen`, the stage-1
  params that `load_frozen` returns.
  """
  del reference
  if protocol not in PROTOCOLS:
    raise ValueError(f'Unknown protocol {protocol!r}; choose from {PROTOCOLS}.')
  stage2 = 'transformer' in params
  if stage2:
    if frozen is None:
      raise ValueError('Evaluating an ERL BCM needs the frozen stage-1 '
                       'params: pass frozen=load_frozen(config).')
    params = {**frozen, **params}
  target = _to_uint8(pair.target)
  output = _jitted_reconstruct(model, stage2)(
      params, image_codec.to_float(target)[None])[0]
  output = np.round(np.clip(np.asarray(output), 0, 1) * 255).astype(np.uint8)
  return _to_uint8(pair.input), output, target

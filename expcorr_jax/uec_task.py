"""What the trainer needs to know about UEC: data, model, loss, evaluation.

Loss (released code): restoration = MSE(three-pass output(input, target),
target), where the target frame is also the reference; monotonicity =
mean(relu(out(input, ref_lo) - out(input, ref_hi))) with single passes and two
references of another scene, EV(ref_lo) < EV(ref_hi); an optional total
variation term (the paper's, weight 0.1; off in the released code).

Evaluation corrects every validation frame towards one fixed reference image
(the default: a well-exposed frame of the embedded sample), under two
protocols: 'full' (full resolution, output rounded to uint8) and 'uec256' (the
official one: input, reference and target resized to 256x256, aspect ignored,
output truncated to uint8).

ERL (config.erl, erl_stage3.py): when on, the loss adds weight *
L1(t_e(f_e(restored)), t_e(f_e(target))) over the batch, where `restored` is
the three-pass output towards the target frame (the one the restoration term
scores) and the BCM is frozen; logged as 'erl'.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from data_prep import image_codec
from expcorr_jax import erl_stage3
from expcorr_jax import input_pipeline
from expcorr_jax.models import uec

PROTOCOLS = ('full', 'uec256')


def validate_config(config: ml_collections.ConfigDict) -> None:
  unknown = set(config.eval.protocols) - set(PROTOCOLS)
  if unknown:
    raise ValueError(f'Unknown eval protocols {sorted(unknown)}; '
                     f'choose from {PROTOCOLS}.')
  if config.loss.num_passes < 1:
    raise ValueError('loss.num_passes must be at least 1.')
  erl_stage3.validate_config(config)


def create_model(config: ml_collections.ConfigDict) -> uec.UEC:
  return uec.UEC(encoder_height=config.model_encoder_height)


def init_params(model: uec.UEC, config: ml_collections.ConfigDict,
                rng: jax.Array) -> Any:
  del config
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  return model.init(rng, x, x, 1, method=uec.UEC.multi_pass)['params']


def make_train_loader(config, train_source, **loader_kwargs):
  if not config.data.name.startswith('multi_exposure'):
    raise ValueError(
        f'UEC trains on multi-exposure sequences, not {config.data.name!r}: '
        "set config.data.name to 'multi_exposure/sample', "
        "'multi_exposure/raw' (with data.manual_dir) or another "
        'multi_exposure config.')
  return input_pipeline.uec_train_loader(
      train_source, crop_size=config.data.crop_size, flip=config.data.flip,
      **loader_kwargs)


def total_variation(images: jax.Array) -> jax.Array:
  """Mean squared horizontal and vertical differences (the paper's TV)."""
  dy = images[:, 1:] - images[:, :-1]
  dx = images[:, :, 1:] - images[:, :, :-1]
  return jnp.mean(dy**2) + jnp.mean(dx**2)


def load_frozen(config: ml_collections.ConfigDict) -> Any:
  """None (UEC's own loss uses no frozen parameters), plus the ERL BCM's
  params when config.erl is on (see erl_stage3.wrap_frozen)."""
  return erl_stage3.wrap_frozen(config, None)


def loss_fn(model: uec.UEC, params: Any, batch: dict[str, jax.Array],
            config: ml_collections.ConfigDict, frozen: Any = None):
  """Returns (loss, metrics) for a float batch from the UEC sampler.

  `frozen` is `load_frozen(config)`: None, or with ERL on the BCM's params.
  """
  _, bcm = erl_stage3.unwrap_frozen(config, frozen)
  restored, out_lo, out_hi = model.apply(
      {'params': params}, batch['input'], batch['target'], batch['ref_lo'],
      batch['ref_hi'], config.loss.num_passes,
      method=uec.UEC.training_outputs)
  restoration = jnp.mean((restored - batch['target'])**2)
  monotonicity = jnp.mean(jax.nn.relu(out_lo - out_hi))
  loss = (config.loss.restoration_weight * restoration +
          config.loss.monotonicity_weight * monotonicity)
  metrics = {'restoration': restoration, 'monotonicity': monotonicity}
  if config.loss.tv_weight:
    tv = total_variation(restored)
    loss += config.loss.tv_weight * tv
    metrics['tv'] = tv
  loss, metrics = erl_stage3.add_regulariser(config, bcm, loss, metrics,
                                             restored, batch['target'])
  metrics['loss'] = loss
  return loss, metrics


def load_reference(config: ml_collections.ConfigDict) -> np.ndarray:
  """The fixed evaluation reference as float32 HxWx3 in [0, 1]."""
  if config.eval.reference == 'sample':
    from data_prep import sample_scenes  # pylint: disable=g-import-not-at-top
    image = sample_scenes.well_exposed_reference()
  else:
    image = image_codec.read_image(config.eval.reference)
  return image_codec.to_float(image)


def _resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
  if image.dtype != np.uint8:
    image = np.round(image_codec.to_float(image) * 255).astype(np.uint8)
  return np.asarray(Image.fromarray(image).resize((size, size),
                                                  Image.BILINEAR))


@functools.lru_cache(maxsize=None)
def _jitted_correct(model: uec.UEC, num_passes: int):
  return jax.jit(lambda params, x, ref: model.apply(
      {'params': params}, x, ref, num_passes, method=uec.UEC.multi_pass))


def eval_pair(model: uec.UEC, params: Any, pair: input_pipeline.EvalPair,
              reference: np.ndarray, protocol: str, num_passes: int = 3,
              frozen: Any = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Corrects one pair under `protocol`; returns uint8 (input, output, target)."""
  del frozen  # No frozen params at evaluation (ERL is training-only).
  correct = _jitted_correct(model, num_passes)
  if protocol == 'full':
    image_in = pair.input
    output = correct(params, image_codec.to_float(image_in)[None],
                     reference[None])[0]
    output = np.round(np.asarray(output) * 255).astype(np.uint8)
    target = pair.target
  elif protocol == 'uec256':
    image_in = _resize_uint8(pair.input, 256)
    ref = image_codec.to_float(_resize_uint8(reference, 256))
    output = correct(params, image_codec.to_float(image_in)[None], ref[None])[0]
    output = np.floor(np.asarray(output) * 255).astype(np.uint8)
    target = _resize_uint8(pair.target, 256)
  else:
    raise ValueError(f'Unknown protocol {protocol!r}; choose from {PROTOCOLS}.')
  if image_in.dtype != np.uint8:
    image_in = np.round(image_codec.to_float(image_in) * 255).astype(np.uint8)
  if target.dtype != np.uint8:
    target = np.round(image_codec.to_float(target) * 255).astype(np.uint8)
  return image_in, output, target

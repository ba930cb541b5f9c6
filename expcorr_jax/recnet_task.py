"""What the trainer needs to know about RECNet: data, model, loss, evaluation.

RECNet (Liu et al., AAAI 2024) is trained on (input, target) pairs: a paired
dataset (msec, sice, lcdp) as stored, or a multi-exposure one read as
(EV != 0 -> EV 0) pairs (`input_pipeline.as_pairs`). The loss is the released
code's (`recnet_loss.recnet_loss`: L1 + SSIM + mask BCE + colour + ECR), with
the paper's variants (MSE pixel term, the opposite mask sign) as config
options; the ECR term runs a frozen ImageNet VGG16, passed to every step as
`frozen` parameters. With ERL on (config.erl, erl_stage3.py) the loss adds
weight * L1(t_e(f_e(output)), t_e(f_e(target))) over the batch with a frozen
BCM (logged as 'erl'); the frozen params are then {'task': VGG16 or None,
'erl': the BCM's}.

Evaluation runs the network on whole validation images under two protocols
(`evaluation.PROTOCOL_METRICS` says what each measures):
  'recnet':     RECNet's test code: stored resolution, output rounded to
                uint8; PSNR on RGB, SSIM on the three RGB channels, LPIPS.
  'enc_fecnet': the ENC / FECNet / ERL code: input and target converted to
                float and bilinearly resized UP to the next multiple of 4 per
                side (`evaluation.resize_to_multiple`), the target to the
                output's size; output rounded to uint8; PSNR on RGB, SSIM on
                grayscale.
"""

import functools
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_prep import image_codec
from expcorr_jax import erl_stage3
from expcorr_jax import evaluation
from expcorr_jax import input_pipeline
from expcorr_jax import recnet_loss
from expcorr_jax import vgg16
from expcorr_jax.models import recnet

PROTOCOLS = ('recnet', 'enc_fecnet')
_PIXEL_LOSSES = ('l1', 'mse')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the bad value and the fix."""
  unknown = set(config.eval.protocols) - set(PROTOCOLS)
  if unknown:
    raise ValueError(f'Unknown eval protocols {sorted(unknown)}; '
                     f'choose from {PROTOCOLS}.')
  if config.model_nc % config.model_num_heads:
    raise ValueError(f'config.model_nc={config.model_nc} must be divisible by '
                     f'config.model_num_heads={config.model_num_heads}.')
  if config.model_nc < 4:
    raise ValueError('config.model_nc must be at least 4 (Refine reduces the '
                     'channels by 4).')
  if config.model_num_blocks < 1:
    raise ValueError('config.model_num_blocks must be at least 1.')
  if config.loss.pixel_loss not in _PIXEL_LOSSES:
    raise ValueError(f'config.loss.pixel_loss must be one of {_PIXEL_LOSSES}, '
                     f'got {config.loss.pixel_loss!r}.')
  if config.data.crop_size is None:
    raise ValueError('config.data.crop_size must be set for RECNet: a batch '
                     'stacks crops of one size (images differ in size).')
  minimum = 8 * config.loss.ecr_pool
  if config.loss.ecr_weight and config.data.crop_size < minimum:
    raise ValueError(
        f'config.data.crop_size={config.data.crop_size} is too small for the '
        f'ECR term (max pool {config.loss.ecr_pool}, then three VGG pools): '
        f'use at least {minimum}, or set config.loss.ecr_weight=0.')
  if config.data.name == 'sice' and config.data.eval_split == 'validation':
    raise ValueError("SICE has no validation split: set "
                     "config.data.eval_split='test'.")
  erl_stage3.validate_config(config)


def create_model(config: ml_collections.ConfigDict) -> recnet.RECNet:
  return recnet.RECNet(nc=config.model_nc, num_blocks=config.model_num_blocks,
                       num_heads=config.model_num_heads)


def init_params(model: recnet.RECNet, config: ml_collections.ConfigDict,
                rng: jax.Array) -> Any:
  """Initial params drawn from an 'rbg' key made from `rng`'s bits.

  RECNet draws ~65 separate parameter tensors; with threefry keys XLA:CPU
  takes 30-40 s to compile them, with an RngBitGenerator ('rbg') key about a
  quarter of that. The draw stays a deterministic function of `rng`.
  """
  del config
  data = jax.random.key_data(rng).ravel()
  key = jax.random.wrap_key_data(jnp.concatenate([data, data])[:4],
                                 impl='rbg')
  return model.init(key, jnp.zeros((1, 32, 32, 3), jnp.float32))['params']


def make_train_loader(config, train_source, **loader_kwargs):
  return input_pipeline.paired_train_loader(
      input_pipeline.as_pairs(train_source, config.data.name),
      crop_size=config.data.crop_size, flip=config.data.flip,
      channel_permute=config.data.channel_permute, **loader_kwargs)


def loss_config(config: ml_collections.ConfigDict
                ) -> recnet_loss.RECNetLossConfig:
  """The loss weights and variants of `config.loss`."""
  loss = config.loss
  return recnet_loss.RECNetLossConfig(
      pixel_weight=loss.pixel_weight, ssim_weight=loss.ssim_weight,
      mask_weight=loss.mask_weight, color_weight=loss.color_weight,
      ecr_weight=loss.ecr_weight, pixel_loss=loss.pixel_loss,
      paper_mask_sign=loss.paper_mask_sign, ecr_pool=loss.ecr_pool)


def load_frozen(config: ml_collections.ConfigDict) -> Any:
  """VGG16 (conv1_1..relu4_3) for the ECR term; None when its weight is 0.

  With config.erl on: {'task': that, 'erl': the BCM's params}.
  """
  vgg = vgg16.load_vgg16_params() if config.loss.ecr_weight else None
  return erl_stage3.wrap_frozen(config, vgg)


def loss_fn(model: recnet.RECNet, params: Any, batch: dict[str, jax.Array],
            config: ml_collections.ConfigDict, frozen: Any = None):
  """Returns (loss, metrics) for a float batch of (input, target) crops."""
  vgg, bcm = erl_stage3.unwrap_frozen(config, frozen)
  out = model.apply({'params': params}, batch['input'])
  loss, terms = recnet_loss.recnet_loss(out.output, batch['target'],
                                        batch['input'], out.mask, vgg,
                                        loss_config(config))
  loss, terms = erl_stage3.add_regulariser(config, bcm, loss, terms,
                                           out.output, batch['target'])
  return loss, dict(terms, loss=loss)


def load_reference(config: ml_collections.ConfigDict) -> None:
  """RECNet corrects without a reference image."""
  del config


@functools.lru_cache(maxsize=None)
def _jitted_correct(model: recnet.RECNet):
  return jax.jit(lambda params, x: model.apply({'params': params}, x).output)


def eval_pair(model: recnet.RECNet, params: Any, pair: input_pipeline.EvalPair,
              reference: None, protocol: str, frozen: Any = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Corrects one pair under `protocol`; returns uint8 (input, output, target).

  `reference` and `frozen` (the ECR term's VGG16) are unused: RECNet corrects
  an image on its own.
  """
  del reference, frozen
  if protocol == 'recnet':
    image_in = image_codec.to_float(pair.input)
    target = evaluation.to_uint8(pair.target)
  elif protocol == 'enc_fecnet':
    image_in = evaluation.resize_to_multiple(pair.input, 4)
    target = image_codec.to_float(pair.target)
  else:
    raise ValueError(f'Unknown protocol {protocol!r}; choose from {PROTOCOLS}.')
  output = _jitted_correct(model)(params, image_in[None])[0]
  output = evaluation.to_uint8(np.asarray(output))
  if target.shape[:2] != output.shape[:2]:  # The target follows the output.
    target = evaluation.to_uint8(cv2.resize(
        target, (output.shape[1], output.shape[0]),
        interpolation=cv2.INTER_LINEAR))
  return evaluation.to_uint8(image_in), output, evaluation.to_uint8(target)

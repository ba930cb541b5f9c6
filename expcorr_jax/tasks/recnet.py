"""RECNet (AAAI 2024): the task of the region-aware, mixed-exposure corrector.

Network: `models/recnet.py` (+ `models/recnet_conv_ops.py`, its CPU-fast
grouped convs and mask blur). Loss: `tasks/recnet_loss.py`. Config:
`configs/recnet.py`.

RECNet is trained on (input, target) pairs: a paired dataset (msec, sice,
lcdp) as stored, or a multi-exposure one read as (EV != 0 -> EV 0) pairs
(`input_pipeline.as_pairs`). The loss is the released code's
(`recnet_loss.recnet_loss`: L1 + SSIM + mask BCE + colour + ECR), with the
paper's variants (MSE pixel term, the opposite mask sign) as config options;
the ECR term runs a frozen ImageNet VGG16 (`models/vgg16.py`), the task's
frozen params. The output and the pair's target are what a regulariser (ERL,
`config.regulariser`) compares.

Evaluation runs the network on whole validation images under:
  'recnet':     RECNet's test code: input and target resized up to a
                multiple of 4 per side (cv2 bilinear, as its loader does),
                output rounded to uint8 (`tensor2img`), PSNR on RGB, SSIM on
                the three RGB channels, plus LPIPS-VGG.
  'enc_fecnet': the shared ENC / FECNet / ERL protocol (`protocols.py`).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from expcorr_jax import input_pipeline
from expcorr_jax import protocols
from expcorr_jax.models import recnet
from expcorr_jax.models import vgg16
from expcorr_jax.tasks import contract
from expcorr_jax.tasks import recnet_loss
from expcorr_jax.weights import unpickling

_PIXEL_LOSSES = ('l1', 'mse')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the bad value and the fix."""
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


def create_model(config: ml_collections.ConfigDict) -> recnet.RECNet:
  return contract.build_module(recnet.RECNet, config)


def init_params(model: recnet.RECNet, rng: jax.Array) -> Any:
  """Initial params drawn from an 'rbg' key made from `rng`'s bits.

  RECNet draws ~65 separate parameter tensors; with threefry keys XLA:CPU
  takes 30-40 s to compile them, with an RngBitGenerator ('rbg') key about a
  quarter of that. The draw stays a deterministic function of `rng`.
  """
  data = jax.random.key_data(rng).ravel()
  key = jax.random.wrap_key_data(jnp.concatenate([data, data])[:4],
                                 impl='rbg')
  return model.init(key, jnp.zeros((1, 32, 32, 3), jnp.float32))['params']


def make_train_loader(config: ml_collections.ConfigDict, train_source: Any,
                      needs: contract.TrainingNeeds = contract.NO_NEEDS,
                      **loader_kwargs: Any) -> Any:
  del needs  # Pairs already hold the normal-exposure target.
  return input_pipeline.paired_train_loader(
      input_pipeline.as_pairs(train_source, config.data.name,
                              config.data.target_ev),
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
  """VGG16 (conv1_1..relu4_3) for the ECR term; None when its weight is 0."""
  return vgg16.load_vgg16_params() if config.loss.ecr_weight else None


def loss_fn(model: recnet.RECNet, params: Any, batch: contract.Batch,
            config: ml_collections.ConfigDict, frozen: Any = None,
            needs: contract.TrainingNeeds = contract.NO_NEEDS
            ) -> contract.LossOutput:
  """The loss of a float batch of (input, target) crops.

  `frozen` is VGG16 (None without the ECR term). The output and the pair's
  target are always returned: they are the normal-exposure pair a
  regulariser may need, at no extra cost.
  """
  del needs  # Always met (see above).
  out = model.apply({'params': params}, batch['input'])
  loss, terms = recnet_loss.recnet_loss(out.output, batch['target'],
                                        batch['input'], out.mask, frozen,
                                        loss_config(config))
  return contract.LossOutput(loss, terms, output=out.output,
                             target=batch['target'])


def correct(model: recnet.RECNet, params: Any, images: jax.Array,
            reference: jax.Array | None = None) -> jax.Array:
  """The corrected images (the network's mask and features are dropped)."""
  del reference  # Reference-free (never given one).
  return model.apply({'params': params}, images).output


def load_official(path: str) -> tuple[Any, dict[str, Any]]:
  """Params and RECNet(nc, num_blocks, ...) of an official state_dict."""
  state_dict = unpickling.load_state_dict(path)
  return recnet.params_from_torch(state_dict), recnet.infer_config(state_dict)


# As RECNet's test code scores (tests/test_recnet_protocol_official.py): its
# loader resizes input and ground truth up to a multiple of 4 per side (cv2
# bilinear), `tensor2img` rounds, RGB SSIM; LPIPS is this project's addition.
RECNET_PROTOCOL = dataclasses.replace(
    protocols.ENC_FECNET, name='recnet', ssim_color='rgb', lpips=True,
    description=("RECNet's test code: resized up to a multiple of 4, RGB "
                 'SSIM, LPIPS'))

TASK = contract.Task(
    name='recnet',
    create_model=create_model,
    init_params=init_params,
    loss_fn=loss_fn,
    make_train_loader=make_train_loader,
    correct=correct,
    protocols={RECNET_PROTOCOL.name: RECNET_PROTOCOL},
    validate_config=validate_config,
    load_frozen=load_frozen,
    inference=contract.InferenceHooks(module_type=recnet.RECNet,
                                      load_official=load_official))

"""ERL stage 2: the BCM's transformer t_e and fusion (see erl_pretext.py).

Network: `models/erl.py` (BCM). Config: `configs/erl_bcm.py`.
f_e and f_d are the frozen stage-1 params (`config.erl.autoencoder_workdir`);
t_e and the 1x1 fusion are trained ({'transformer', 'fusion'}) with the
Fourier-phase pretext loss (or pixel L1, `config.loss.pretext`). Evaluated
under 'reconstruction': I', each image alone in its batch.
"""

from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from expcorr_jax.models import erl
from expcorr_jax.tasks import contract
from expcorr_jax.tasks import erl_pretext


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the bad value; also loads the stage-1 checkpoint."""
  erl_pretext.validate_widths(config)
  model = erl_pretext.create_model(config)
  if model.token_dim % config.erl.num_heads:
    raise ValueError(
        f'config.erl.num_heads={config.erl.num_heads} must divide the token '
        f'size token_size^2 * features = {model.token_dim}.')
  if config.erl.batch_attention not in erl.BATCH_ATTENTION_MODES:
    raise ValueError(f'config.erl.batch_attention must be one of '
                     f'{erl.BATCH_ATTENTION_MODES}, got '
                     f'{config.erl.batch_attention!r}.')
  if config.loss.pretext not in erl_pretext.PRETEXT_LOSSES:
    raise ValueError(f'config.loss.pretext must be one of '
                     f'{erl_pretext.PRETEXT_LOSSES}, got '
                     f'{config.loss.pretext!r}.')
  per_device = config.batch_size // jax.device_count()
  if config.erl.batch_attention == 'per_device' and per_device == 1:
    logging.warning(
        'per_device batch attention with one image per device: each image '
        'attends only to itself. Use a larger batch or batch_attention=global.')
  load_frozen(config)


def init_params(model: erl.BCM, rng: jax.Array) -> Any:
  """Fresh t_e and fusion params."""
  tokens = jnp.zeros((2, model.token_dim), jnp.float32)
  stacked = jnp.zeros((1, 1, 1, 2 * model.features), jnp.float32)
  return model.init(
      rng, tokens, stacked,
      method=lambda m, t, f: (m.correlate(t), m.fusion(f)))['params']


def load_frozen(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The frozen stage-1 {'encoder', 'decoder'}."""
  return erl_pretext.load_autoencoder(config.erl.autoencoder_workdir,
                                      config.erl)


def loss_fn(model: erl.BCM, params: Any, batch: dict[str, jax.Array],
            config: ml_collections.ConfigDict,
            frozen: dict[str, Any]) -> contract.LossOutput:
  """The pretext loss of a float batch of normal-exposure 'image's."""
  images = batch['image']
  reconstructed = erl.bcm_reconstruct(
      model, {**frozen, **params}, images, mode=config.erl.batch_attention)
  phase = erl.phase_loss(images, reconstructed)
  l1 = jnp.mean(jnp.abs(reconstructed - images))
  loss = phase if config.loss.pretext == 'phase' else l1
  return contract.LossOutput(loss, {'phase': phase, 'l1': l1})


def correct(model: erl.BCM, params: Any, images: jax.Array) -> jax.Array:
  """I' of each image; `params` hold the frozen stage 1 too."""
  return erl.bcm_reconstruct(model, params, images)


TASK = contract.Task(
    name=erl_pretext.BCM_MODEL,
    create_model=erl_pretext.create_model,
    init_params=init_params,
    loss_fn=loss_fn,
    make_train_loader=erl_pretext.make_train_loader,
    correct=correct,
    protocols={erl_pretext.RECONSTRUCTION.name: erl_pretext.RECONSTRUCTION},
    validate_config=validate_config,
    load_frozen=load_frozen,
    correction_params=lambda params, frozen: {**frozen, **params})

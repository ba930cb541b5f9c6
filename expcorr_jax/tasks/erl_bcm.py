"""ERL stage 2: the BCM's transformer t_e (see erl_pretext.py).

Network: `models/erl.py` (BCM). Config: `configs/erl_bcm.py`.
f_e and f_d are the frozen stage-1 params (`config.erl.autoencoder_workdir`).
The params are {'transformer', 'fusion'}; which of them train is
`config.erl.stage2_trains`: 'transformer', the paper's "only the transformer
encoder t_e is trained" (W keeps its start, `config.erl.fusion_init`, by a
stopped gradient), or 'transformer_and_fusion' (this project's variant).
The pretext loss (`config.loss.pretext`, Table 2's arms): 'phase' (the
paper's Fourier-phase loss), 'l1' (pixel L1) or 'none' (t_e stays random).

Logged each step, to see whether t_e learns anything:
  fprime_dependence: mean |I' - I'(F' = 0)|, how much the reconstruction
    depends on F' at all;
  fprime_batch_std: the std of F' across the batch, averaged over its
    entries (near 0: t_e collapsed to one F' for every image);
  fusion_fprime_norm: the norm of W's F' half;
  cross_sample: how much the other images' I' move when image 0 of the
    batch is replaced (`erl.cross_sample_shift`): what the batch
    relationship actually does (0 under 'per_sample' attention; the 'none'
    arm, whose t_e keeps its random start, gives its value at
    initialisation);
  grad_norm (the trainer's): with W frozen, t_e's gradient norm.
Evaluated under 'reconstruction': I', each image alone in its batch.
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
  """Fails early, naming the bad value; also checks the stage-1 checkpoint
  (its saved config only: the params load once, in `load_frozen`)."""
  erl_pretext.validate_widths(config)
  model = erl_pretext.create_model(config)
  if model.token_dim % config.erl.num_heads:
    raise ValueError(
        f'config.erl.num_heads={config.erl.num_heads} must divide the token '
        f'size token_size^2 * features = {model.token_dim}.')
  if config.erl.fusion_init not in erl.FUSION_INITS:
    raise ValueError(f'config.erl.fusion_init must be one of '
                     f'{erl.FUSION_INITS}, got {config.erl.fusion_init!r}.')
  if config.erl.stage2_trains not in STAGE2_TRAINS:
    raise ValueError(f'config.erl.stage2_trains must be one of '
                     f'{STAGE2_TRAINS}, got {config.erl.stage2_trains!r}.')
  if (config.erl.fusion_init == 'features_only' and
      config.erl.stage2_trains == 'transformer'):
    raise ValueError(
        "config.erl.fusion_init='features_only' starts W with a zero F' "
        "half and stage2_trains='transformer' keeps W frozen: I' would never "
        "depend on F', so t_e would get no gradient. Use fusion_init="
        "'features_and_relationship' (the default) or stage2_trains="
        "'transformer_and_fusion'.")
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
  erl_pretext.check_autoencoder(config.erl.autoencoder_workdir, config.erl)


STAGE2_TRAINS = ('transformer', 'transformer_and_fusion')


def create_model(config: ml_collections.ConfigDict) -> erl.BCM:
  return erl_pretext.create_model(config).clone(
      fusion_init=config.erl.fusion_init)


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


def loss_fn(model: erl.BCM, params: Any, batch: contract.Batch,
            config: ml_collections.ConfigDict, frozen: Any = None,
            needs: contract.TrainingNeeds = contract.NO_NEEDS
            ) -> contract.LossOutput:
  """The pretext loss of a float batch of normal-exposure 'image's.

  `frozen` is stage 1's {'encoder', 'decoder'}; a pretext stage is never
  regularised (`needs` asks nothing it can give).
  """
  del needs  # Returns no output/target: the trainer refuses a regulariser.
  images = batch['image']
  if config.erl.stage2_trains == 'transformer':
    params = {**params, 'fusion': jax.lax.stop_gradient(params['fusion'])}
  params = {**frozen, **params}
  features = model.apply({'params': params}, images, method=erl.BCM.encode)
  tokens = model.apply({'params': params}, features, method=erl.BCM.tokens)
  correlated = erl.correlate(model, params, tokens,
                             mode=config.erl.batch_attention)
  reconstructed = model.apply({'params': params}, features, correlated,
                              method=erl.BCM.fuse_and_decode)
  phase = erl.phase_loss(images, reconstructed)
  l1 = jnp.mean(jnp.abs(reconstructed - images))
  losses = {'phase': phase, 'l1': l1, 'none': jnp.zeros((), jnp.float32)}
  without = jax.lax.stop_gradient(model.apply(
      {'params': params}, features, jnp.zeros_like(correlated),
      method=erl.BCM.fuse_and_decode))
  kernel = params['fusion']['kernel']
  def reconstruct(batch_images):
    return erl.bcm_reconstruct(model, params, batch_images,
                               mode=config.erl.batch_attention)
  metrics = {
      'phase': phase, 'l1': l1,
      'cross_sample': erl.cross_sample_shift(reconstruct, images,
                                             reconstructed),
      'fprime_dependence': jnp.mean(jnp.abs(
          jax.lax.stop_gradient(reconstructed) - without)),
      'fprime_batch_std': jnp.mean(jnp.std(
          jax.lax.stop_gradient(correlated), axis=0)),
      'fusion_fprime_norm': jnp.sqrt(jnp.sum(
          jax.lax.stop_gradient(kernel[:, :, model.features:])**2)),
  }
  return contract.LossOutput(losses[config.loss.pretext], metrics)


def correct(model: erl.BCM, params: Any, images: jax.Array,
            reference: jax.Array | None = None) -> jax.Array:
  """I' of each image; `params` hold the frozen stage 1 too."""
  del reference  # Reference-free (never given one).
  return erl.bcm_reconstruct(model, params, images)


TASK = contract.Task(
    name=erl_pretext.BCM_MODEL,
    create_model=create_model,
    init_params=init_params,
    loss_fn=loss_fn,
    make_train_loader=erl_pretext.make_train_loader,
    correct=correct,
    protocols={erl_pretext.RECONSTRUCTION.name: erl_pretext.RECONSTRUCTION},
    validate_config=validate_config,
    load_frozen=load_frozen,
    correction_params=lambda params, frozen: {**frozen, **params})

"""ERL stage 1: the BCM's auto-encoder f_e, f_d (see erl_pretext.py).

Network: `models/erl.py` (BCM). Config: `configs/erl_autoencoder.py`.
Trained params {'encoder', 'decoder'}, loss L1(f_d(f_e(I)), I) on
normal-exposure images; evaluated under 'reconstruction'.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from expcorr_jax.models import erl
from expcorr_jax.tasks import contract
from expcorr_jax.tasks import erl_pretext


def init_params(model: erl.BCM, rng: jax.Array) -> Any:
  images = jnp.zeros((1, 16, 16, 3), jnp.float32)
  return model.init(rng, images, method=erl.BCM.reconstruct)['params']


def loss_fn(model: erl.BCM, params: Any, batch: contract.Batch,
            config: ml_collections.ConfigDict, frozen: Any = None,
            needs: contract.TrainingNeeds = contract.NO_NEEDS
            ) -> contract.LossOutput:
  """L1 reconstruction of a float batch of normal-exposure 'image's."""
  del config, frozen, needs  # No loss options, frozen params or output.
  images = batch['image']
  reconstructed = model.apply({'params': params}, images,
                              method=erl.BCM.reconstruct)
  l1 = jnp.mean(jnp.abs(reconstructed - images))
  return contract.LossOutput(l1, {'l1': l1})


def correct(model: erl.BCM, params: Any, images: jax.Array,
            reference: jax.Array | None = None) -> jax.Array:
  """f_d(f_e(images)): the auto-encoder's reconstruction."""
  del reference  # Reference-free (never given one).
  return model.apply({'params': params}, images, method=erl.BCM.reconstruct)


TASK = contract.Task(
    name=erl_pretext.AUTOENCODER,
    create_model=erl_pretext.create_model,
    init_params=init_params,
    loss_fn=loss_fn,
    make_train_loader=erl_pretext.make_train_loader,
    correct=correct,
    protocols={erl_pretext.RECONSTRUCTION.name: erl_pretext.RECONSTRUCTION},
    validate_config=erl_pretext.validate_widths)

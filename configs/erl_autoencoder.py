r"""ERL stage 1: the BCM's encoder f_e and decoder f_d as an auto-encoder.

"Learning Sample Relationship for Exposure Correction" (CVPR 2023) first
trains f_e and f_d as a "self-reconstruction" auto-encoder (Sec. 3.2), then
freezes them for stage 2 (configs/erl_bcm.py). The paper does not say on
which images; this project uses the normal-exposure images stage 2 uses:
the EV 0 frame of every scene (or each pair's target on a paired dataset).

  python -m expcorr_jax.main --config=configs/erl_autoencoder.py --workdir=/tmp/erl_ae
  # On a CPU, on the embedded sample, in a minute or two:
  python -m expcorr_jax.main --config=configs/erl_autoencoder.py:runlocal \
      --workdir=/tmp/erl_ae_local

The paper states Adam with betas (0.9, 0.99) and a "self-reconstruction"
objective; the loss (L1), widths, learning rate, crops, batch and steps are
this project's choices (no official code exists). Stage 2 must use the same
erl.features / encoder_layers / decoder_layers (it checks).
"""

import ml_collections

from expcorr_jax import config_args
from expcorr_jax.tasks import erl_pretext


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the stage-1 config; `arg='runlocal'` shrinks it for a CPU."""
  arg = config_args.parse_arg(arg, runlocal=False)
  config = erl_pretext.pretext_config(arg.runlocal)
  config.model = 'erl_autoencoder'
  if arg.runlocal:
    config.num_train_steps = 300
    config.eval_every_steps = 150
    config.optimizer.learning_rate = 1e-3
  return config

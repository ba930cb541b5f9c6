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


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the stage-1 config; `arg='runlocal'` shrinks it for a CPU."""
  arg = config_args.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.model = 'erl_autoencoder'
  # A training regulariser (ERL stage 3: `erl.config_block()`); None: none.
  config.regulariser = None
  config.seed = 0

  config.erl = ml_collections.ConfigDict()
  config.erl.features = 8  # C, the channels of F (full resolution).
  config.erl.encoder_layers = 3  # 3x3 convs in f_e.
  config.erl.decoder_layers = 3  # 3x3 convs in f_d.

  config.data = ml_collections.ConfigDict()
  config.data.name = 'multi_exposure/sample'
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.manual_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  # Multi-exposure data is evaluated as (EV != target_ev -> target_ev)
  # pairs; UEC's radiometry table uses -3 (see README).
  config.data.target_ev = 0.0
  config.data.normal_ev = 0.0  # Multi-exposure data: the frame to learn.
  config.data.crop_size = 256
  config.data.flip = True
  config.data.worker_count = 2

  config.batch_size = 8
  config.num_train_steps = 50_000

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-4
  config.optimizer.b1 = 0.9  # The paper's betas.
  config.optimizer.b2 = 0.99
  # MultiStepLR steps (the rate times decay_factor at each); none here.
  config.optimizer.decay_steps = ()
  config.optimizer.decay_factor = 1.0

  config.eval = ml_collections.ConfigDict()
  config.eval.protocols = ('reconstruction',)
  config.eval.max_images = ml_collections.FieldReference(None, field_type=int)
  config.eval.num_grid_images = 4

  config.log_every_steps = 100
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 1_000
  config.keep_checkpoints = 3

  if arg.runlocal:
    config.data.crop_size = 64
    config.data.worker_count = 0
    config.num_train_steps = 300
    config.log_every_steps = 25
    config.eval_every_steps = 150
    config.checkpoint_every_steps = 100
    config.eval.max_images = 8
    config.optimizer.learning_rate = 1e-3
  return config

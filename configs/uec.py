r"""UEC: unsupervised exposure correction (ECCV 2024), the project's main job.

Trains the 19K-parameter pixel-wise corrector on multi-exposure sequences
(by default the embedded sample, prepared on first use), evaluates PSNR/SSIM
per EV on the validation split with one fixed reference, and writes
checkpoints, TensorBoard summaries and image grids to the workdir.

  python -m expcorr_jax.main --config=configs/uec.py --workdir=/tmp/uec
  # A CPU-sized run of the real loop, in a few minutes:
  python -m expcorr_jax.main --config=configs/uec.py:runlocal --workdir=/tmp/uec_local
  # Another dataset or override:
  python -m expcorr_jax.main --config=configs/uec.py --workdir=/tmp/uec \
      --config.data.name=multi_exposure/raw --config.data.manual_dir=~/raws
  # With ERL's sample-relationship regulariser (ERL stage 3, tasks/erl.py),
  # after ERL stages 1 and 2 (configs/erl_autoencoder.py, configs/erl_bcm.py;
  # absolute workdirs):
  python -m expcorr_jax.main --config=configs/uec.py:runlocal,erl \
      --workdir=/tmp/uec_erl_local --config.regulariser.bcm_workdir=/tmp/erl_bcm_local

Config arguments (comma-separated): transform=crop|whole|resize448 (how
training frames are taken: random 448x448 crops, this project's choice and
the default; whole images at batch 1, as the released MSEC loader; frames
resized to 448x448 with the aspect ignored, as the released radiometry
loader), runlocal (a CPU-sized run), erl (adds
config.regulariser: name 'erl', bcm_workdir, weight = the paper's alpha 0.1,
batch_attention). With ERL the regulariser compares the input corrected
(three passes) towards its scene's EV 0 frame with that frame, as the paper
compares an output with its normal-exposure ground truth (one more forward
pass per step); inference is unchanged (the checkpoint holds UEC's params
only).

Defaults follow the released training code: Adam lr 1e-4, beta1 0.9, loss =
restoration (three passes, MSE to the target frame) +
monotonicity (single passes against two references of another scene). The
paper's TV term (weight 0.1) was dropped by the released code; it stays
available as loss.tv_weight, off. Batch 8, 100k steps and 448x448 random
crops are this project's choices: the released code trains MSEC on whole
images at batch 1 and the radiometry set on 448x448 resizes, both offered
(the transform argument, e.g. configs/uec.py:transform=resize448).
"""

import ml_collections

from expcorr_jax import base_config
from expcorr_jax import config_args
from expcorr_jax.tasks import erl


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The UEC config; `arg` 'runlocal' shrinks it for a CPU, 'erl' adds ERL."""
  arg = config_args.parse_arg(arg, runlocal=False, erl=False,
                              transform='crop')
  config = base_config.get_config(runlocal=arg.runlocal)
  config.model = 'uec'
  # The exposure encoder sees inputs resized to this height (official: 256).
  config.model_encoder_height = 256
  # Training frames (the `transform` argument): random 448x448 crops, this
  # project's choice; the released loaders differ (see the docstring).
  config.data.crop_size = 448
  # Frames resized to resize_to x resize_to (aspect ignored) before any crop.
  config.data.resize_to = ml_collections.FieldReference(None, field_type=int)

  config.loss = ml_collections.ConfigDict()
  config.loss.num_passes = 3
  config.loss.restoration_weight = 1.0
  config.loss.monotonicity_weight = 1.0
  config.loss.tv_weight = 0.0  # The paper's 0.1; the released code drops it.

  # 'sample': a well-exposed frame of the embedded sample; or an image path.
  config.eval.reference = 'sample'
  config.eval.protocols = ('full', 'uec256')

  if arg.runlocal:
    config.model_encoder_height = 128  # 4x fewer encoder FLOPs on a CPU.
    config.data.crop_size = 128
    config.batch_size = 4
    config.num_train_steps = 200
    config.eval_every_steps = 200  # Only the final evaluation.
    config.checkpoint_every_steps = 100
    config.optimizer.learning_rate = 1e-3
  if arg.transform == 'whole':  # The released MSEC loader: whole images.
    config.data.crop_size = None
    config.batch_size = 1  # Images differ in size; run it on one device.
  elif arg.transform == 'resize448':  # The released radiometry loader.
    config.data.resize_to = 448
    config.data.crop_size = None
  elif arg.transform != 'crop':
    raise ValueError(f'transform={arg.transform!r}: choose crop (random '
                     '448x448 crops, the default), whole (whole images, batch '
                     '1: the released MSEC loader) or resize448 (frames '
                     'resized to 448x448: the released radiometry loader).')
  if arg.erl:
    # ERL stage 3: the sample-relationship regulariser (tasks/erl.py);
    # set --config.regulariser.bcm_workdir=<an ERL stage-2 workdir>.
    config.regulariser = erl.config_block()
  return config

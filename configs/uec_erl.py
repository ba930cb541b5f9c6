r"""UEC trained with ERL's sample-relationship regulariser (ERL stage 3).

"Learning Sample Relationship for Exposure Correction" (CVPR 2023) adds
alpha * L1(t_e(f_e(output)), t_e(f_e(target))) to a corrector's loss, with
the batch-correlation module (BCM) of stages 1 and 2 frozen (alpha = 0.1).
For UEC the output is the three-pass restoration towards the target frame of
the sequence (the one the restoration term scores) and the target is that
frame. Everything else is configs/uec.py's; inference is unchanged (the
checkpoint holds UEC's params only).

The three stages, in order, on the embedded sample on a CPU (absolute
workdirs: each stage's checkpoint names the previous one's):

  python -m expcorr_jax.main --config=configs/erl_autoencoder.py:runlocal \
      --workdir=/tmp/erl_ae_local
  python -m expcorr_jax.main --config=configs/erl_bcm.py:runlocal \
      --workdir=/tmp/erl_bcm_local --config.erl.autoencoder_workdir=/tmp/erl_ae_local
  python -m expcorr_jax.main --config=configs/uec_erl.py:runlocal \
      --workdir=/tmp/uec_erl_local --config.erl.bcm_workdir=/tmp/erl_bcm_local

Without :runlocal the same three commands train the full-size models. The
baseline is configs/uec.py with the same arguments (minus erl.bcm_workdir).
"""

import ml_collections

from expcorr_jax import erl_stage3


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/uec.py's config (`arg='runlocal'` too) with ERL switched on."""
  # Required: --config.erl.bcm_workdir=<ERL stage-2 workdir>.
  return erl_stage3.base_config_with_erl(__file__, 'uec', arg)

r"""ERL stage 2: the batch-correlation module's transformer t_e.

Loads the frozen f_e, f_d of a stage-1 run (configs/erl_autoencoder.py) and
trains the transformer t_e, whose attention runs across the samples of a
batch, with the paper's Fourier-phase pretext loss (Sec. 3.2, Eqs. 2-3) on
normal-exposure images; the 1x1 fusion W stays at its start unless
erl.stage2_trains='transformer_and_fusion':

  python -m expcorr_jax.main --config=configs/erl_bcm.py --workdir=/tmp/erl_bcm \
      --config.erl.autoencoder_workdir=/tmp/erl_ae
  # On a CPU, after the runlocal stage 1:
  python -m expcorr_jax.main --config=configs/erl_bcm.py:runlocal \
      --workdir=/tmp/erl_bcm_local --config.erl.autoencoder_workdir=/tmp/erl_ae_local

Give autoencoder_workdir as an absolute path; a step folder
(`<workdir>/checkpoints/<step>`) pins the stage-1 weights, which stage 3 reads
again (`tasks.erl_pretext.load_bcm`). Stage 3 trains a corrector with the
regulariser: configs/uec.py:erl or configs/recnet.py:erl with
--config.regulariser.bcm_workdir=<this run's workdir>.

From the paper: features resized to 16x16, one token per sample, t_e a
transformer encoder over the batch, I' = f_d(1x1([F, F'])), the phase loss,
"only the transformer encoder t_e is trained", Adam betas (0.9, 0.99), "100
epochs". The project's choices: t_e's layer (1 pre-LN layer, GELU, no
dropout, 4 heads, MLP = token size; BatchFormer's is post-LN, ReLU, dropout
0.5), W's start (erl.fusion_init), widths, learning rate, crops, batch and
steps. Table 2's arms are loss.pretext = 'phase' | 'l1' | 'none' (no
pretext task: t_e stays random). Logged per step: fprime_dependence (how
much I' changes when F' is zeroed), fprime_batch_std (F''s spread across
the batch; ~0 means collapse), fusion_fprime_norm and grad_norm (t_e's, W
being frozen).

Fig. 9 of the paper (alpha and batch size) is swept in stage 3:
--config.regulariser.weight=<alpha> and --config.batch_size=<B> on the
corrector's config.

erl.batch_attention: with the batch split over devices, 'global' lets the
whole batch attend to itself (as on the paper's single GPU), 'per_device'
only each device's share.
"""

import ml_collections

from expcorr_jax import config_args
from expcorr_jax.tasks import erl_pretext


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the stage-2 config; `arg='runlocal'` shrinks it for a CPU."""
  arg = config_args.parse_arg(arg, runlocal=False)
  config = erl_pretext.pretext_config(arg.runlocal)
  config.model = 'erl_bcm'
  # t_e: tokens of token_size^2 * features = 2048 values per image.
  config.erl.token_size = 16
  config.erl.transformer_layers = 1
  config.erl.num_heads = 4
  config.erl.mlp_dim = ml_collections.FieldReference(None, field_type=int)
  config.erl.batch_attention = 'global'  # Or 'per_device'.
  # The paper: "only the transformer encoder t_e is trained" in stage 2.
  # 'transformer_and_fusion' also trains W (this project's variant).
  config.erl.stage2_trains = 'transformer'
  # W's start (the paper is silent; this project's choice): identity on F
  # and on F', so I' depends on F' from the first step. 'features_only'
  # (identity on F, zero on F') leaves t_e without gradient while W is frozen.
  config.erl.fusion_init = 'features_and_relationship'
  config.erl.autoencoder_workdir = ml_collections.FieldReference(
      None, field_type=str)

  config.loss = ml_collections.ConfigDict()
  # Table 2's arms: 'phase' (the paper's pretext task), 'l1' (pixel L1
  # pretext) or 'none' (no pretext: t_e stays at its random start).
  config.loss.pretext = 'phase'

  if arg.runlocal:
    config.erl.token_size = 8  # Tokens of 512: 16x fewer t_e params.
    config.num_train_steps = 200
    config.eval_every_steps = 100
  return config

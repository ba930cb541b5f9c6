"""Writes a training-layout checkpoint holding given params and config.

For tests that need a checkpoint of a model without training one: the same
orbax layout as `checkpointing.save` (items 'state' and 'config' under
`<workdir>/checkpoints/<step>`), which `checkpointing.load_params` reads.
"""

import os

import numpy as np
import orbax.checkpoint as ocp

from expcorr_jax import checkpointing


def write_params_checkpoint(workdir: str | os.PathLike[str], params,
                            config: dict, step: int = 1) -> None:
  """Saves {'step', 'params', 'opt_state': {}} and `config` at `step`."""
  manager = ocp.CheckpointManager(
      os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=1, create=True, enable_async_checkpointing=False),
      item_names=('state', 'data', 'config'))
  state = {'step': np.int32(step), 'params': params, 'opt_state': {}}
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(config)), force=True)
  manager.wait_until_finished()
  manager.close()

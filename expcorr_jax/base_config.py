"""The shared config every method's config extends; its keys are required.

A method's config (`configs/<method>.py`) starts from `get_config()` and
sets only what is its own, as the flax examples' variants start from
`default.py`:

  def get_config(arg=None):
    arg = config_args.parse_arg(arg, runlocal=False)
    config = base_config.get_config(runlocal=arg.runlocal)
    config.model = 'my_method'
    config.data.crop_size = 128
    config.loss = ml_collections.ConfigDict(dict(weight=1.0))
    return config

Every key here is read by the shared trainer or evaluation; `required_keys`
lists them all, and a config missing one fails at the start, named
(`train.validate_config`), instead of silently taking a value nobody chose.
The defaults are the ones most methods share; a method overrides the rest.
"""

import ml_collections


def get_config(runlocal: bool = False) -> ml_collections.ConfigDict:
  """The shared fields with their defaults.

  Args:
    runlocal: also apply the shared part of a CPU-sized run (no grain
      worker processes, frequent logging); each method shrinks its own
      model, crops and schedule.
  """
  config = ml_collections.ConfigDict()
  # The method: a task name (expcorr_jax/tasks/<name>.py) or the module path
  # of a task of your own package. Every method's config sets it.
  config.model = ml_collections.FieldReference(None, field_type=str)
  # A training regulariser (ERL stage 3: `erl.config_block()`); None: none.
  config.regulariser = None
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # A dataset of data_prep (built on first use): 'multi_exposure/sample' is
  # the embedded sample; 'msec', 'sice', 'lcdp', 'lol' and the RAW builds
  # read data.manual_dir.
  config.data.name = 'multi_exposure/sample'
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.manual_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  # Multi-exposure data is evaluated as (EV != target_ev -> target_ev)
  # pairs; UEC's radiometry table uses -3 (see README).
  config.data.target_ev = 0.0
  config.data.crop_size = 256  # Square training crops; None: whole images.
  config.data.flip = True
  config.data.worker_count = 2  # grain worker processes per host.

  config.batch_size = 8  # Global, over all devices and processes.
  config.num_train_steps = 100_000

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-4
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  # MultiStepLR steps (the rate times decay_factor at each); none here.
  config.optimizer.decay_steps = ()
  config.optimizer.decay_factor = 1.0

  config.eval = ml_collections.ConfigDict()
  # Shared protocols (expcorr_jax/protocols.py) or the method's own.
  config.eval.protocols = ('full',)
  config.eval.max_images = ml_collections.FieldReference(None, field_type=int)
  config.eval.num_grid_images = 4

  config.log_every_steps = 100
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 1_000
  config.keep_checkpoints = 3
  # A workdir's lease (one training job per workdir, expcorr_jax/
  # workdir_lease.py) is taken over after this long without a heartbeat.
  config.workdir_lease_stale_s = 300

  if runlocal:
    config.data.worker_count = 0
    config.log_every_steps = 25
  return config


def required_keys() -> tuple[str, ...]:
  """Every dotted key of `get_config()`: what the shared code reads."""
  keys = []

  def walk(node: ml_collections.ConfigDict, prefix: str) -> None:
    for name in node.keys():
      value = node[name]
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, f'{prefix}{name}.')
      else:
        keys.append(prefix + name)
  walk(get_config(), '')
  return tuple(keys)

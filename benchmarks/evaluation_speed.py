r"""Evaluation throughput on images of mixed sizes: images/s and compiles.

  python benchmarks/evaluation_speed.py [--methods=uec,recnet] [--max_images=24]

Runs the evaluation that training and `python -m expcorr_jax.evaluate` run
(`evaluation.evaluate_source` with `evaluation.pair_corrector`) on the
validation split of the embedded sample (24 pairs of six sizes, prepared on
first use), for each method with freshly initialised params at its
`:runlocal` size and its configured protocols, LPIPS off (a metric, not the
correction, and the same in any variant). It prints, per method: the wall
seconds of a first evaluation (compiles included) and of a second one
(compiled programs reused), images/s of each, and how many correction
programs were compiled.
"""

import time

from absl import app
from absl import flags
import jax

from data_prep import build
from expcorr_jax import config_args
from expcorr_jax import corrections
from expcorr_jax import evaluation
from expcorr_jax import input_pipeline
from expcorr_jax import protocols
from expcorr_jax import tasks
import timing  # benchmarks/timing.py; this folder is on sys.path.

_METHODS = flags.DEFINE_list('methods', ['uec', 'recnet'],
                             'Methods (configs/<method>.py:runlocal).')
_MAX_IMAGES = flags.DEFINE_integer('max_images', 24, 'Validation pairs.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir of the '
                                'embedded sample (default: TFDS default).')


def _count_compiles() -> int:
  return corrections.compile_count()


def benchmark(method: str) -> str:
  """One table row for `method`."""
  config = config_args.load_config(f'configs/{method}.py', 'runlocal')
  task = tasks.get_task(config.model)
  model = task.create_model(config)
  params = jax.jit(lambda rng: task.init_params(model, rng))(
      jax.random.key(0))
  reference = (evaluation.load_reference(config) if task.needs_reference
               else None)
  source = input_pipeline.as_pairs(build.data_source(
      config.data.name, config.data.eval_split, _DATA_DIR.value),
                                   config.data.name)
  chosen = protocols.resolve(task, config.eval.protocols)
  count = input_pipeline.num_eval_pairs(source, _MAX_IMAGES.value)
  sizes = {input_pipeline.read_eval_pair(source, i).input.shape
           for i in range(count)}
  compiled_before = _count_compiles()
  walls = []
  for _ in range(2):
    start = time.perf_counter()
    evaluation.evaluate_source(
        source, evaluation.pair_corrector(task, model, params, reference),
        chosen, limit=_MAX_IMAGES.value, lpips=False)
    walls.append(time.perf_counter() - start)
  return (f'| {method} | {count} | {len(sizes)} | '
          f'{",".join(p.name for p in chosen)} | {walls[0]:.1f} | '
          f'{count / walls[0]:.2f} | {walls[1]:.1f} | {count / walls[1]:.2f} '
          f'| {_count_compiles() - compiled_before} |')


def main(argv):
  del argv
  print(timing.describe_machine())
  build.ensure_prepared('multi_exposure/sample', _DATA_DIR.value)
  print('| method | images | sizes | protocols | first s | first images/s '
        '| second s | second images/s | programs compiled |')
  print('|---|---:|---:|---|---:|---:|---:|---:|---:|')
  for method in _METHODS.value:
    print(benchmark(method), flush=True)
  print('LPIPS off; programs compiled: correction programs of '
        '`evaluation.pair_corrector` for the method, all its protocols.')


if __name__ == '__main__':
  app.run(main)

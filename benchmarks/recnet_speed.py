r"""RECNet speed: inference ms, training images/s, memory, share of matmul peak.

  python benchmarks/recnet_speed.py [--sizes=1080p,4k] [--nc=8] \
      [--num_blocks=5] [--rounds=3] [--train_batch=8] [--train_crop=128] \
      [--variants=fast,reference,official] [--notrain] [--profile] \
      [--official_dir=RECNet] [--torch_python=PYTHON]

Runs on JAX's default device and times, for each variant:

  fast: `RECNet(conv_impl='fast')`: grouped / depthwise convs as sums of
    shifted multiplies and the 31x31 mask blur as an FFT convolution (what
    `conv_impl='auto'`, the default, picks on a CPU; see models/recnet.py);
  reference: `RECNet(conv_impl='lax')`: every conv through
    `lax.conv_general_dilated` (the straightforward port; what 'auto' picks on
    other backends);
  official: the official PyTorch code (github.com/kravrolens/RECNet, a
    checkout given by --official_dir) on the CPU, in a child process under
    --torch_python (see official_pytorch.py and recnet_official_torch.py):
    the same images, the same network weights, and for the training step the
    same loss with the same VGG16 weights and Adam. Its rounds alternate
    with the first JAX variant's: each of our calls is followed by one of
    the official code's, seconds apart. Without --official_dir or without
    torch there, the variant is skipped with a message saying why.

Inference: `model.apply(...).output` under `jax.jit` on one image per
--sizes entry, the input already on the device. Training: one optimiser
step on --train_batch crops of --train_crop^2 pixels: `jax.value_and_grad` of
`recnet_task.loss_fn` (the configs/recnet.py loss: L1 + SSIM + mask BCE +
colour + ECR through the frozen VGG16 when its weights are available, else
with the ECR term off) and an optax Adam update, all jitted.

FLOPs are XLA's own count (`jit(f).lower(...).compile().cost_analysis()`) of
each compiled variant, so the two variants count different work (an FFT may
count as little or nothing): "GFLOP/s" is that count over the best time. The
float32 matmul peak (jnp.dot of two N x N matrices at HIGHEST precision, N =
2048 on a CPU, 8192 elsewhere) is timed in the same process before every
timed run; "of peak" is GFLOP/s over the best peak, "paired" the median over
rounds of the ratio to the peak matmul timed just before (the figure least
sensitive to other load on a shared machine). "vs reference" is the median
reference time over the median time of the row, so the speedup is measured
in the same run, and "vs official" the official code's median time over the
row's (its "max diff" compares its output or first loss with the first JAX
variant's, a check that both sides did the same work). "vs official,
paired" (first JAX variant) is the median over rounds of the official
call's time over ours just before it: on a machine whose speed drifts
between minutes, the ratio that drift disturbs least. Memory: peak bytes
in use on an accelerator
(`memory_stats()['peak_bytes_in_use']`, a running maximum over the process),
on a CPU the process's maximum resident set size (`getrusage`, also a
running maximum, so only increases between rows mean anything).

--profile times the sub-modules separately at the first size (forward) and
at the training batch (gradient of a sum of the outputs w.r.t. input and
params): extract + mask predictor, one dual block's RIN and MCSA, a whole
dual block (x num_blocks for the network), and merge + Refine.

Parameters: the official-layout fixture (../shared/fixtures/recnet) when
its width matches, else random ones drawn as PyTorch initialises them (see
`benchmark_params`); a smooth random image. The speed does not depend on the
values, but the "max diff" column does.
"""

import contextlib
import os
import resource
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from expcorr_jax.tasks import recnet as recnet_task
from expcorr_jax.weights import unpickling
from expcorr_jax.models import recnet
import official_pytorch  # benchmarks/official_pytorch.py, as timing.
import timing  # benchmarks/timing.py; this folder is on sys.path.

_SIZES = flags.DEFINE_list('sizes', ['1080p', '4k'],
                           'Inference sizes: 1080p, 4k or HxW (e.g. 540x960).')
_NC = flags.DEFINE_integer('nc', 8, 'Feature width.')
_NUM_BLOCKS = flags.DEFINE_integer('num_blocks', 5, 'Dual blocks.')
_NUM_HEADS = flags.DEFINE_integer('num_heads', 2, 'Attention heads.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed runs per variant.',
                               lower_bound=1)
_VARIANTS = flags.DEFINE_list(
    'variants', ['fast', 'reference', 'official'],
    'Variants to time: fast, reference, official (needs --official_dir).')
_OFFICIAL_DIR = flags.DEFINE_string(
    'official_dir', None, 'Checkout of github.com/kravrolens/RECNet, for the '
    '"official" variant.')
_TORCH_PYTHON = flags.DEFINE_string(
    'torch_python', sys.executable, 'Interpreter with torch, torchvision, '
    'einops and scipy that runs the official code.')
_TRAIN = flags.DEFINE_boolean('train', True, 'Time a training step.')
_TRAIN_BATCH = flags.DEFINE_integer('train_batch', 8, 'Training batch size.')
_TRAIN_CROP = flags.DEFINE_integer('train_crop', 128, 'Training crop side.')
_PROFILE = flags.DEFINE_boolean('profile', False,
                                'Also time the sub-modules separately.')
_PEAK_SIZE = flags.DEFINE_integer('peak_size', None,
                                  'N of the N x N peak matmul (default: 2048 '
                                  'on a CPU, 8192 elsewhere).')

IMPLS = {'fast': 'fast', 'reference': 'lax'}
OFFICIAL = 'official'
# First JAX variant's inference outputs (by size) and first training loss,
# for the official rows' "max diff".
_FIRST_RESULTS = {}


def jax_variants() -> list[str]:
  return [v for v in _VARIANTS.value if v != OFFICIAL]


def make_model(variant: str) -> recnet.RECNet:
  if variant not in IMPLS:
    raise ValueError(f'unknown variant {variant!r}; use '
                     f'{sorted(IMPLS) + [OFFICIAL]}')
  return recnet.RECNet(nc=_NC.value, num_blocks=_NUM_BLOCKS.value,
                       num_heads=_NUM_HEADS.value, conv_impl=IMPLS[variant])


_FIXTURE = os.path.join(os.path.dirname(__file__), '..', '..', 'shared',
                        'fixtures', 'recnet', 'recnet_random_nc8.pth')


def benchmark_params(model: recnet.RECNet, seed: int = 0):
  """(params, description): the fixture's official-layout weights if they fit.

  Otherwise weights drawn as PyTorch initialises layers (uniform, 1/sqrt(fan
  in)). Large random weights would make the channel attention's logits, sums
  over all pixels, so large that float32 rounding flips its softmax, and the
  variants' outputs could not be compared.
  """
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 8, 8, 3)))['params']
  if os.path.isfile(_FIXTURE):
    state_dict = unpickling.load_state_dict(_FIXTURE)
    if recnet.infer_config(state_dict) == dict(
        nc=model.nc, num_blocks=model.num_blocks, num_heads=model.num_heads,
        reduction=model.reduction, blur_size=model.blur_size):
      return recnet.params_from_torch(state_dict), 'fixture recnet_random_nc8.pth'
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if 'blur_kernel' in name:
      return jnp.asarray(recnet.gaussian_kernel(s.shape[0], 3.0), s.dtype)
    if s.ndim == 0 or 'temperature' in name:
      return jnp.full(s.shape, 0.5, s.dtype)
    fan_in = int(np.prod(s.shape[:-1])) if s.ndim > 1 else s.shape[0]
    bound = 1 / np.sqrt(fan_in)
    return jnp.asarray(rng.uniform(-bound, bound, s.shape), s.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes), 'random (torch init)'


def smooth_image(batch: int, height: int, width: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  small = jnp.asarray(rng.random((batch, 9, 16, 3)).astype(np.float32))
  return jax.image.resize(small, (batch, height, width, 3), 'bilinear')


def compiled_flops(jitted, *args) -> tuple[float, float]:
  """(XLA's FLOP count of jitted(*args), seconds to lower and compile)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan'))), seconds


def peak_memory() -> str:
  device = jax.devices()[0]
  if device.platform != 'cpu':
    stats = device.memory_stats() or {}
    if 'peak_bytes_in_use' in stats:
      return f'{stats["peak_bytes_in_use"] / 2**30:.2f} GiB peak'
  rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return f'{rss_kib / 2**20:.2f} GiB maxrss'


def time_rounds(function, args, peak, official=None, request=''
                ) -> tuple[list[float], list[float], list[float]]:
  """(seconds per round, peak-matmul seconds just before each round, the
  official code's seconds per round): with an `OfficialSession`, each round
  also times one official call (`request`) right after ours."""
  matmul, operands, _ = peak['op']
  times, peak_times, official_times = [], [], []
  for _ in range(_ROUNDS.value):
    peak_seconds = min(timing.seconds(matmul, *operands) for _ in range(2))
    peak['seconds'].append(peak_seconds)
    peak_times.append(peak_seconds)
    times.append(timing.seconds(function, *args))
    if official is not None:
      official_times.append(official.seconds(request))
  return times, peak_times, official_times


def row(task, size, variant, unit_count, unit, flops, compile_s, times,
        peak_times, peak, max_diff, official_times=()) -> dict:
  """A timed row; with `official_times` (the official code's, round by round
  after ours), those too and the median over rounds of official / ours."""
  peak_flops = peak['op'][2]
  return {
      'official_times': list(official_times),
      'vs_official_paired': (
          statistics.median(o / t for o, t in zip(official_times, times))
          if official_times else float('nan')),
      'task': task, 'size': size, 'variant': variant,
      'median_s': statistics.median(times), 'best_s': min(times),
      'units': unit_count, 'unit': unit, 'flops': flops,
      'compile_s': compile_s,
      'paired': statistics.median(
          (flops / t) / (peak_flops / p) for t, p in zip(times, peak_times)),
      'memory': peak_memory(), 'max_diff': max_diff,
      'load': os.getloadavg()[0]}


def benchmark_inference(height, width, peak, official=None, request=''
                        ) -> list[dict]:
  """Rows of each JAX variant; the first one's rounds alternate with the
  official code's (`official`, `request`) when given."""
  image = smooth_image(1, height, width)
  rows, outputs = [], {}
  for variant in jax_variants():
    partner = official if variant == jax_variants()[0] else None
    model = make_model(variant)
    params, _ = benchmark_params(model)
    apply = jax.jit(lambda p, x, m=model: m.apply({'params': p}, x).output)
    flops, compile_s = compiled_flops(apply, params, image)
    outputs[variant] = np.asarray(apply(params, image))
    times, peak_times, official_times = time_rounds(
        apply, (params, image), peak, partner, request)
    first = outputs[jax_variants()[0]]
    _FIRST_RESULTS.setdefault(f'{height}x{width}', first)
    rows.append(row('inference', f'{height}x{width}', variant, 1, 'image',
                    flops, compile_s, times, peak_times, peak,
                    float(np.max(np.abs(outputs[variant] - first))),
                    official_times))
    print(f'  done: inference {height}x{width} {variant} '
          f'{statistics.median(times) * 1e3:.0f} ms', flush=True)
  return rows


def train_config():
  """configs/recnet.py's config (the loss weights), at the flags' model."""
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
  from configs import recnet as recnet_config  # pylint: disable=g-import-not-at-top
  config = recnet_config.get_config()
  config.model_nc, config.model_num_blocks = _NC.value, _NUM_BLOCKS.value
  config.model_num_heads = _NUM_HEADS.value
  return config


def train_setup():
  """(config, frozen VGG16 or None, batch, note) for the training step."""
  config = train_config()
  try:
    frozen = recnet_task.load_frozen(config)
    note = 'loss: configs/recnet.py, ECR term through VGG16 on'
  except Exception as e:  # pylint: disable=broad-except
    config.loss.ecr_weight = 0.0
    frozen = None
    note = f'loss: configs/recnet.py with ECR off (no VGG16 weights: {e})'
  b, c = _TRAIN_BATCH.value, _TRAIN_CROP.value
  batch = {'input': smooth_image(b, c, c, seed=1),
           'target': smooth_image(b, c, c, seed=2)}
  return config, frozen, batch, note


def benchmark_train(peak, official=None) -> tuple[list[dict], str]:
  """Rows of each JAX variant's training step; the first one's rounds
  alternate with the official code's when `official` is given."""
  config, frozen, batch, note = train_setup()
  b, c = _TRAIN_BATCH.value, _TRAIN_CROP.value
  optimizer = optax.adam(1e-4)
  rows, losses = [], {}
  for variant in jax_variants():
    partner = official if variant == jax_variants()[0] else None
    model = make_model(variant)
    params, _ = benchmark_params(model)
    opt_state = optimizer.init(params)

    def step(params, opt_state, batch, frozen, model=model):
      loss, grads = jax.value_and_grad(
          lambda p: recnet_task.loss_fn(model, p, batch, config,
                                        frozen=frozen).loss
      )(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step)
    args = (params, opt_state, batch, frozen)
    flops, compile_s = compiled_flops(step, *args)
    losses[variant] = float(step(*args)[2])
    times, peak_times, official_times = time_rounds(step, args, peak,
                                                    partner, 'train')
    rows.append(row('train step', f'{b}x{c}x{c}', variant, b, 'image', flops,
                    compile_s, times, peak_times, peak,
                    abs(losses[variant] - losses[jax_variants()[0]]),
                    official_times))
    _FIRST_RESULTS.setdefault('train', losses[jax_variants()[0]])
    print(f'  done: train {variant} {statistics.median(times):.2f} s',
          flush=True)
  return rows, note


def official_session() -> official_pytorch.OfficialSession | None:
  """The official code, ready to be timed, or None (the reason printed)."""
  if OFFICIAL not in _VARIANTS.value:
    return None
  if not _OFFICIAL_DIR.value:
    print('  skipped: official (no --official_dir)')
    return None
  why = official_pytorch.missing_requirement(_TORCH_PYTHON.value,
                                             _OFFICIAL_DIR.value)
  if why:
    print(f'  skipped: official ({why})')
    return None
  sizes = [timing.parse_size(text) for text in _SIZES.value]
  config, frozen, batch, _ = train_setup()
  loss = config.loss
  _, described = benchmark_params(make_model(jax_variants()[0]))
  return official_pytorch.OfficialSession(
      _TORCH_PYTHON.value, _OFFICIAL_DIR.value,
      images=[np.asarray(smooth_image(1, h, w)) for h, w in sizes],
      train_batch=({k: np.asarray(v) for k, v in batch.items()}
                   if _TRAIN.value else None),
      vgg_params=frozen or {},
      loss_weights=(loss.pixel_weight, loss.ssim_weight, loss.mask_weight,
                    loss.color_weight, loss.ecr_weight),
      state_dict_path=_FIXTURE if described.startswith('fixture') else '',
      nc=_NC.value)


def official_rows(out: dict[str, np.ndarray], rows: list[dict]
                  ) -> list[dict]:
  """Rows of the official code's times (those timed alongside `rows`), with
  its outputs (`out`, the session's results) against the first JAX
  variant's."""
  official_times = {(r['task'], r['size']): r['official_times']
                    for r in rows if r['official_times']}
  sizes = [timing.parse_size(text) for text in _SIZES.value]
  _, described = benchmark_params(make_model(jax_variants()[0]))
  variant = (f'official (torch {out["torch_version"]}, '
             f'{int(out["torch_threads"])} threads)')
  rows = []

  def official_row(task, size, units, diff):
    seconds = official_times[(task, size)]
    return {'task': task, 'size': size, 'variant': variant,
            'median_s': statistics.median(seconds), 'best_s': min(seconds),
            'units': units, 'unit': 'image', 'flops': float('nan'),
            'compile_s': float('nan'), 'paired': float('nan'),
            'vs_official_paired': float('nan'), 'official_times': [],
            'memory': '-', 'max_diff': diff, 'load': os.getloadavg()[0],
            'official': True}

  for i, (h, w) in enumerate(sizes):
    first = _FIRST_RESULTS.get(f'{h}x{w}')
    diff = (float(np.max(np.abs(out[f'image_{i}_output'] - first)))
            if first is not None and described.startswith('fixture')
            else float('nan'))
    rows.append(official_row('inference', f'{h}x{w}', 1, diff))
  if _TRAIN.value:
    first = _FIRST_RESULTS.get('train')
    diff = (abs(float(out['first_train_loss']) - first)
            if first is not None and described.startswith('fixture')
            else float('nan'))
    b, c = _TRAIN_BATCH.value, _TRAIN_CROP.value
    rows.append(official_row('train step', f'{b}x{c}x{c}', b, diff))
  return rows


def profile_parts(variant: str, height: int, width: int, batch: int) -> None:
  """Times each sub-module of one variant alone: forward and gradient."""
  model = make_model(variant)
  params, _ = benchmark_params(model)
  impl, nc = IMPLS[variant], _NC.value
  block_params = params['block_1']
  mask_model = recnet.MaskPredictor(nc)
  rin = recnet.RegionInstanceNorm(nc, conv_impl=impl)
  mcsa = recnet.MixedScaleAttention(nc, _NUM_HEADS.value, impl)
  block = recnet.DualBlock(nc, _NUM_HEADS.value, conv_impl=impl)
  refine = recnet.Refine(nc)
  conv = recnet.Conv(nc, 3)
  merge = recnet.Conv(nc, 1)

  def parts(x, mask, feats):
    return {
        'extract + mask predictor': (
            lambda p, x: mask_model.apply(
                {'params': p['mask_predictor']},
                conv.apply({'params': p['extract']}, x)), (x,)),
        'one block: RIN': (
            lambda p, f, m: rin.apply({'params': p['block_1']['rin']}, f, m),
            (feats, mask)),
        'one block: MCSA': (
            lambda p, f: mcsa.apply({'params': p['block_1']['mcsa']}, f, f),
            (feats,)),
        f'one block (x{_NUM_BLOCKS.value})': (
            lambda p, f, m: block.apply({'params': block_params}, f, m),
            (feats, mask)),
        'merge + refine': (
            lambda p, f: refine.apply(
                {'params': p['refine']},
                merge.apply({'params': p['merge']},
                            jnp.concatenate([f] * _NUM_BLOCKS.value, -1))),
            (feats,)),
        'whole network': (
            lambda p, x: model.apply({'params': p}, x).output, (x,)),
    }

  for label, (b, h, w) in (('forward', (1, height, width)),
                           ('gradient', (batch, _TRAIN_CROP.value,
                                         _TRAIN_CROP.value))):
    x = smooth_image(b, h, w)
    mask = jax.nn.sigmoid(smooth_image(b, h, w, seed=5)[..., :1] * 4 - 2)
    feats = jnp.tile(x, (1, 1, 1, (nc + 2) // 3))[..., :nc]
    print(f'\n{variant}, {label} at {b}x{h}x{w}:')
    print('| part | median ms | XLA GFLOP |')
    print('|---|---:|---:|')
    for name, (f, args) in parts(x, mask, feats).items():
      if label == 'gradient':
        f = jax.grad(lambda p, *a, f=f: sum(
            jnp.sum(t) for t in jax.tree.leaves(f(p, *a))),
                     argnums=tuple(range(len(args) + 1)))
      jitted = jax.jit(f)
      flops, _ = compiled_flops(jitted, params, *args)
      jax.block_until_ready(jitted(params, *args))
      times = [timing.seconds(jitted, params, *args) for _ in range(_ROUNDS.value)]
      print(f'| {name} | {statistics.median(times) * 1e3:.1f} | '
            f'{flops / 1e9:.2f} |', flush=True)


def print_table(rows, peak) -> None:
  peak_rate = peak['op'][2] / min(peak['seconds'])
  print(f'\nfloat32 matmul peak ({peak["size"]}^2, best of '
        f'{len(peak["seconds"])}): {peak_rate / 1e9:.1f} GFLOP/s\n')
  reference = {(r['task'], r['size']): r['median_s'] for r in rows
               if r['variant'] == 'reference'}
  official = {(r['task'], r['size']): r['median_s'] for r in rows
              if r.get('official')}
  print('| task | size | variant | median ms | best ms | images/s | '
        'compile s | XLA GFLOP | GFLOP/s | of peak | of peak, paired | '
        'vs reference | vs official | vs official, paired | max diff vs '
        'first | memory | load 1 min |')
  print('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|'
        '---:|---|---:|')

  def figure(value, spec):
    return '-' if np.isnan(value) else format(value, spec)

  for r in rows:
    rate = r['flops'] / r['best_s']
    ref = reference.get((r['task'], r['size']))
    speedup = f'{ref / r["median_s"]:.1f}x' if ref else '-'
    base = official.get((r['task'], r['size']))
    over_official = f'{base / r["median_s"]:.2f}x' if base else '-'
    print(f'| {r["task"]} | {r["size"]} | {r["variant"]} | '
          f'{r["median_s"] * 1e3:.0f} | {r["best_s"] * 1e3:.0f} | '
          f'{r["units"] / r["median_s"]:.2f} | '
          f'{figure(r["compile_s"], ".1f")} | '
          f'{figure(r["flops"] / 1e9, ".1f")} | {figure(rate / 1e9, ".2f")} | '
          f'{figure(rate / peak_rate, ".4f")} | {figure(r["paired"], ".4f")} | '
          f'{speedup} | {over_official} | '
          f'{figure(r["vs_official_paired"], ".2f")} | '
          f'{figure(r["max_diff"], ".1e")} | '
          f'{r["memory"]} | {r["load"]:.2f} |')


def main(argv):
  del argv
  print(timing.describe_machine())
  print(' '.join(['python'] + sys.argv))
  for variant in jax_variants():
    make_model(variant)  # Fails early on a bad name.
  cpu = jax.devices()[0].platform == 'cpu'
  size = _PEAK_SIZE.value or (2048 if cpu else 8192)
  peak = {'op': timing.make_peak(size), 'seconds': [], 'size': size}
  timing.seconds(peak['op'][0], *peak['op'][1])  # Compiles.
  rows = []
  official = official_session()
  with official or contextlib.nullcontext():
    for i, text in enumerate(_SIZES.value):
      rows += benchmark_inference(*timing.parse_size(text), peak, official,
                                  f'image_{i}')
    note = ''
    if _TRAIN.value:
      train_rows, note = benchmark_train(peak, official)
      rows += train_rows
  if official is not None:
    rows += official_rows(official.results, rows)
    print('  done: official', flush=True)
  print_table(rows, peak)
  print(f'\nRECNet nc={_NC.value}, {_NUM_BLOCKS.value} blocks, '
        f'{_NUM_HEADS.value} heads; params: '
        f'{benchmark_params(make_model(jax_variants()[0]))[1]}; smooth '
        'random images. '
        f'images/s from median times; "max diff vs first": inference max '
        f'|output - first variant\'s|, training |loss - first variant\'s| '
        f'after one step. {note}')
  if _PROFILE.value:
    height, width = timing.parse_size(_SIZES.value[0])
    for variant in jax_variants():
      profile_parts(variant, height, width, _TRAIN_BATCH.value)
  load = ' '.join(f'{x:.2f}' for x in os.getloadavg())
  print(f'\nload average at end: {load}')


if __name__ == '__main__':
  app.run(main)

r"""Rendering several EVs from one decode against one LibRaw run per EV.

  python benchmarks/render_raw.py [--repeats=7] [--evs=-1.5,-1,0,1,1.5] \
      [RAW_FILES...]

Ours: `raw_render.decode_raw` once, then `raw_render.render_exposures` (a
lookup table per EV over the 16-bit linear image). Naive: one LibRaw
`postprocess` per EV with exp_shift=2^EV, no auto-brightening and the sRGB
curve, otherwise the same settings; each call redoes the whole pipeline
(scaling, demosaic, colour matrix). Both read the file once per repeat and
make 8-bit images. Runs alternate between the two ways so that drifting load
on the machine hits both alike; the table gives median seconds per file.
Without RAW files it uses the golden fixture ../shared/fixtures/raw.

LibRaw clamps exp_shift to 0.25..8 (EV -2..+3), so the naive way cannot
render EVs outside that range; they are flagged. The last two columns
compare the two renders over all EVs: the largest difference in 8-bit codes
and the share of values differing by more than 1 code. At EV 0 they agree
within rounding (1 code); at other EVs LibRaw shifts exposure before
demosaicing and clipping, so pixels near sensor saturation get other colours.
"""

import pathlib
import statistics
import time

from absl import app
from absl import flags
import numpy as np
import rawpy

from data_prep import ev_tags
from data_prep import raw_render

_REPEATS = flags.DEFINE_integer('repeats', 7, 'Timed runs per way and file.',
                                lower_bound=1)
_EVS = flags.DEFINE_string('evs', '-1.5,-1,0,1,1.5', 'EVs rendered per file.')

FIXTURE = (pathlib.Path(__file__).resolve().parents[2] / 'shared' /
           'fixtures' / 'raw' / 'kodak_dc50.kdc')


def render_ours(path, evs) -> dict[float, np.ndarray]:
  image = raw_render.decode_raw(path)
  return raw_render.render_exposures(image, evs, bits=8)


def render_naive(path, evs) -> dict[float, np.ndarray]:
  args = raw_render.linear_postprocess_args()
  args.update(gamma=(2.4, 12.92), output_bps=8, exp_preserve_highlights=0.0)
  with rawpy.imread(str(path)) as raw:
    return {ev: raw.postprocess(exp_shift=2.0**ev, **args) for ev in evs}


def _seconds(function, *args) -> float:
  start = time.perf_counter()
  function(*args)
  return time.perf_counter() - start


def main(argv):
  evs = ev_tags.parse_evs(_EVS.value)
  paths = [pathlib.Path(p) for p in argv[1:]] or [FIXTURE]
  clamped = [ev for ev in evs if not 0.25 <= 2.0**ev <= 8.0]
  if clamped:
    print(f'Note: LibRaw clamps exp_shift to 0.25..8; naive renders of EVs '
          f'{clamped} are wrong.')
  print(f'{len(evs)} EVs {list(evs)}, 8-bit, median of {_REPEATS.value} runs')
  header = (f'{"file":<24} {"size":>11} {"ours s":>8} {"naive s":>8} '
            f'{"speed-up":>8} {"max diff":>8} {">1 code":>8}')
  print(header)
  print('-' * len(header))
  for path in paths:
    ours, naive = render_ours(path, evs), render_naive(path, evs)  # Warm-up.
    differences = [np.abs(ours[ev].astype(int) - naive[ev]) for ev in evs]
    largest = max(int(d.max()) for d in differences)
    share = np.mean([np.mean(d > 1) for d in differences])
    times = {'ours': [], 'naive': []}
    for _ in range(_REPEATS.value):
      times['ours'].append(_seconds(render_ours, path, evs))
      times['naive'].append(_seconds(render_naive, path, evs))
    ours_s = statistics.median(times['ours'])
    naive_s = statistics.median(times['naive'])
    height, width = ours[evs[0]].shape[:2]
    print(f'{path.name[:24]:<24} {f"{width}x{height}":>11} {ours_s:>8.3f} '
          f'{naive_s:>8.3f} {naive_s / ours_s:>7.1f}x {largest:>8d} '
          f'{share:>8.2%}')


if __name__ == '__main__':
  app.run(main)

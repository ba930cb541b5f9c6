"""Exposure-value tags as MSEC names them: N1.5, N1, 0, P1, P1.5.

A tag is `N<|ev|>` for negative EVs, `P<ev>` for positive ones and `0` for
zero, with the magnitude written in its shortest decimal form (`%g`). File
names carry the tag after the LAST underscore (`<scene>_<tag>`), so scene names
may themselves contain underscores (the official UEC loader got this wrong).
"""

import math
import re

MSEC_EVS = (-1.5, -1.0, 0.0, 1.0, 1.5)

_TAG_RE = re.compile(r'^(?:0|[NP](?:\d+(?:\.\d+)?|\.\d+))$')
# UEC radiometry folders: neg3, neg2, neg1, 0, pos1, pos2, pos3.
_RADIOMETRY_RE = re.compile(r'^(neg|pos)(\d+(?:\.\d+)?)$')


def ev_to_tag(ev: float) -> str:
  """Returns the MSEC-style tag of `ev` (e.g. -1.5 -> 'N1.5', 1 -> 'P1')."""
  if not math.isfinite(ev):
    raise ValueError(f'EV must be finite, got {ev!r}.')
  if ev == 0:
    return '0'
  return ('N' if ev < 0 else 'P') + f'{abs(ev):g}'


def tag_to_ev(tag: str) -> float:
  """Parses an MSEC tag ('N1.5', '0', 'P1') or a radiometry one ('neg3')."""
  if _TAG_RE.match(tag):
    if tag == '0':
      return 0.0
    sign = -1.0 if tag[0] == 'N' else 1.0
    return sign * float(tag[1:])
  match = _RADIOMETRY_RE.match(tag)
  if match:
    sign = -1.0 if match.group(1) == 'neg' else 1.0
    return sign * float(match.group(2))
  raise ValueError(
      f'{tag!r} is not an exposure tag: expected N<ev>, 0 or P<ev> '
      "(e.g. 'N1.5', '0', 'P1') or neg<ev>/pos<ev>.")


def is_tag(tag: str) -> bool:
  try:
    tag_to_ev(tag)
  except ValueError:
    return False
  return True


def split_scene_tag(stem: str) -> tuple[str, str]:
  """Splits '<scene>_<tag>' on the LAST underscore; the tag must be valid."""
  scene, sep, tag = stem.rpartition('_')
  if not sep or not scene or not is_tag(tag):
    raise ValueError(
        f'{stem!r} is not named <scene>_<tag> with an exposure tag after the '
        "last underscore (e.g. 'a0001_N1.5').")
  return scene, tag


def parse_evs(text: str) -> tuple[float, ...]:
  """Parses a comma-separated EV list such as '-1.5,-1,0,1,1.5'."""
  try:
    evs = tuple(float(part) for part in text.split(',') if part.strip())
  except ValueError as e:
    raise ValueError(
        f'Could not parse EV list {text!r}: give numbers separated by commas, '
        'e.g. --evs=-1.5,-1,0,1,1.5') from e
  if not evs:
    raise ValueError('The EV list is empty: give at least one EV.')
  if len(set(evs)) != len(evs):
    raise ValueError(f'The EV list {text!r} repeats a value.')
  if not all(math.isfinite(ev) and abs(ev) <= 16 for ev in evs):
    raise ValueError(f'EVs must be finite and within +-16, got {text!r}.')
  return evs

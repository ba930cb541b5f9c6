"""Tests of the render_raw CLI and API on copies of a real RAW (Kodak DC50).

Most runs are in-process (`render_raw.run` parses flags into fresh FlagValues)
with --workers=1; one subprocess run covers `python -m`, the process pool and
the exit status. Few EVs keep the runs fast where more would prove nothing.
"""

import functools
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import zlib

from absl import app
import numpy as np
from PIL import Image
import pytest

from data_prep import camera_tags
from data_prep import image_codec
from data_prep import raw_render
from data_prep import render_raw

RAW = 'raw/kodak_dc50.kdc'
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def _decode(path) -> raw_render.LinearImage:
  return raw_render.decode_raw(path)


@pytest.fixture
def raws(shared_fixture, tmp_path):
  """A directory of RAW copies: a.kdc, b.KDC, nested/c.kdc, and a non-RAW."""
  source = shared_fixture(RAW)
  folder = tmp_path / 'raws'
  (folder / 'nested').mkdir(parents=True)
  for name in ('a.kdc', 'b.KDC', 'nested/c.kdc'):
    shutil.copy(source, folder / name)
  (folder / 'notes.txt').write_text('not a RAW')
  return folder


def _truncated(shared_fixture, path: pathlib.Path) -> pathlib.Path:
  path.write_bytes(shared_fixture(RAW).read_bytes()[:40_000])
  return path


def _stamps(folder: pathlib.Path, pattern: str) -> dict[str, tuple[int, int]]:
  """(inode, mtime_ns) per file: a rewrite by os.replace changes both."""
  return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
          for p in sorted(folder.glob(pattern))}


def _read_png(path) -> np.ndarray:
  return np.asarray(Image.open(path))


def _paeth(a: int, b: int, c: int) -> int:
  p = a + b - c
  pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
  if pa <= pb and pa <= pc:
    return a
  return b if pb <= pc else c


def _read_png_rgb16(path) -> tuple[np.ndarray, list[int]]:
  """Decodes a 16-bit RGB PNG with no image library (PNG spec, 2nd ed.).

  OpenCV both writes and reads our 16-bit PNGs, so a bug common to both
  directions would round-trip; this reader shares no code with it. Returns
  the pixels and each row's filter type.
  """
  data = pathlib.Path(path).read_bytes()
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  chunks, pos = {}, 8
  while pos < len(data):  # Chunk: length, type, body, CRC of type + body.
    length, kind = struct.unpack('>I4s', data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + length]
    (crc,) = struct.unpack('>I', data[pos + 8 + length:pos + 12 + length])
    assert zlib.crc32(kind + body) == crc, kind
    chunks.setdefault(kind, []).append(body)
    pos += 12 + length
  assert list(chunks)[0] == b'IHDR' and kind == b'IEND'
  width, height, depth, color, _, _, interlace = struct.unpack(
      '>IIBBBBB', chunks[b'IHDR'][0])
  assert (depth, color, interlace) == (16, 2, 0)  # 16-bit RGB, no Adam7.
  bpp, stride = 6, 6 * width  # Bytes per pixel and per row.
  raw = zlib.decompress(b''.join(chunks[b'IDAT']))
  assert len(raw) == height * (1 + stride)
  rows, filters, prev = [], [], bytearray(stride)
  for y in range(height):  # Each row: a filter-type byte, then the bytes.
    start = y * (1 + stride)
    filters.append(raw[start])
    row = bytearray(raw[start + 1:start + 1 + stride])
    for i in range(stride):
      a = row[i - bpp] if i >= bpp else 0  # Left, up, up-left (decoded).
      b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
      predictor = (0, a, b, (a + b) // 2, _paeth(a, b, c))[raw[start]]
      row[i] = (row[i] + predictor) & 0xFF
    rows.append(bytes(row))
    prev = row
  pixels = np.frombuffer(b''.join(rows), '>u2')  # Big-endian samples.
  return pixels.reshape(height, width, 3).astype(np.uint16), filters


def test_cli_renders_every_ev_with_a_manifest(raws, tmp_path, shared_fixture):
  out = tmp_path / 'out'
  status = render_raw.run(['--evs=-1.5,-1,0,1,1.5', f'--output_dir={out}',
                           '--workers=1', '--noprogress', str(raws)])
  assert status == 0
  tags = ['N1.5', 'N1', '0', 'P1', 'P1.5']
  expected = {f'{stem}_{tag}.png' for stem in 'abc' for tag in tags}
  expected |= {'a.json', 'b.json', 'c.json', 'manifest.json'}
  assert {p.name for p in out.iterdir()} == expected
  image = _decode(shared_fixture(RAW))
  for tag, ev in zip(tags, (-1.5, -1.0, 0.0, 1.0, 1.5)):
    np.testing.assert_array_equal(_read_png(out / f'b_{tag}.png'),
                                  raw_render.expose(image, ev))

  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['count'] == 3
  assert [entry['stem'] for entry in manifest['files']] == ['a', 'b', 'c']
  entry = manifest['files'][1]
  assert entry == json.loads((out / 'b.json').read_text())
  assert entry['source'] == str((raws / 'b.KDC').resolve())
  assert entry['camera'] == {'make': 'Eastman Kodak Company',
                             'model': 'Kodak Digital Science DC50 Zoom Camera'}
  assert (entry['height'], entry['width']) == (512, 768)
  assert entry['settings']['evs'] == [-1.5, -1.0, 0.0, 1.0, 1.5]
  assert entry['settings']['tags'] == tags
  assert entry['settings']['bits'] == 8
  assert entry['settings']['tone_curve'] == 'none'
  assert entry['outputs'] == {tag: f'b_{tag}.png' for tag in tags}
  assert entry['raw']['white_level'] == 16383
  assert entry['raw']['black_level_per_channel'] == [0, 0, 0, 0]
  assert len(entry['raw']['camera_white_balance']) == 4


def test_tone_curve_is_named_and_applied(raws, tmp_path, shared_fixture):
  out = tmp_path / 'out'
  assert render_raw.run(['--evs=0', '--tone_curve=camera',
                         f'--output_dir={out}',
                         '--workers=1', '--noprogress',
                         str(raws / 'a.kdc')]) == 0
  settings = json.loads((out / 'manifest.json').read_text())['settings']
  assert settings['tone_curve'] == 'camera'
  assert 'camera_tone_curve' in settings['tone_curve_description']
  image = _decode(shared_fixture(RAW))
  rendered = _read_png(out / 'a_0.png')
  np.testing.assert_array_equal(
      rendered, raw_render.expose(image, 0.0, tone_curve='camera'))
  assert np.any(rendered != raw_render.expose(image, 0.0))


def test_16_bit_png_round_trips_exactly(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 65536, (37, 53, 3), dtype=np.uint16)
  rgb[0, 0] = (0, 65535, 0x1234)  # Extremes and distinct high/low bytes.
  path = tmp_path / 'x.png'
  image_codec.write_png(path, rgb)
  with Image.open(path) as image:  # Pillow checks CRCs, reads high bytes.
    assert image.size == (53, 37)
    np.testing.assert_array_equal(np.asarray(image), rgb >> 8)
  decoded, filters = _read_png_rgb16(path)  # Independent of OpenCV.
  np.testing.assert_array_equal(decoded, rgb)
  # On noise libpng picks every filter type, so the reader is checked on all
  # five; should an encoder change stop that, extend this image, not the check.
  assert set(filters) == {0, 1, 2, 3, 4}, sorted(set(filters))
  np.testing.assert_array_equal(image_codec.read_image(path), rgb)  # Ours.
  assert [p.name for p in tmp_path.iterdir()] == ['x.png']  # No temp left.


def test_cli_16_bit_render_round_trips(raws, tmp_path, shared_fixture):
  cv2 = pytest.importorskip('cv2')
  out = tmp_path / 'out'
  assert render_raw.run(['--evs=-1,1', '--bits=16', f'--output_dir={out}',
                         '--workers=1', '--noprogress',
                         str(raws / 'a.kdc')]) == 0
  image = _decode(shared_fixture(RAW))
  bgr = cv2.imread(str(out / 'a_P1.png'), cv2.IMREAD_UNCHANGED)
  np.testing.assert_array_equal(bgr[..., ::-1],
                                raw_render.expose(image, 1.0, bits=16))
  assert json.loads((out / 'a.json').read_text())['settings']['bits'] == 16


def test_corrupt_raw_is_reported_and_skipped(raws, tmp_path, shared_fixture,
                                             caplog):
  bad = _truncated(shared_fixture, raws / 'broken.kdc')
  out = tmp_path / 'out'
  summary = render_raw.render_files([raws], out, (0.0, 1.0), workers=1,
                                    progress=False)
  assert summary.failed.keys() == {str(bad)}
  assert 'broken.kdc' in summary.failed[str(bad)]
  assert 'LibRawIOError' in summary.failed[str(bad)]
  assert len(summary.rendered) == 3 and not summary.skipped
  assert summary.summary_line().startswith(
      '3 rendered, 0 skipped (already done), 1 failed')
  assert 'Skipped' in caplog.text and 'broken.kdc' in caplog.text
  assert not list(out.glob('broken*'))
  manifest = json.loads((out / 'manifest.json').read_text())
  assert [entry['stem'] for entry in manifest['files']] == ['a', 'b', 'c']


def test_exit_status_is_nonzero_only_when_nothing_is_rendered(
    raws, tmp_path, shared_fixture):
  only_bad = tmp_path / 'only_bad'
  only_bad.mkdir()
  bad = _truncated(shared_fixture, only_bad / 'broken.kdc')
  out = tmp_path / 'out'
  args = ['--evs=0', f'--output_dir={out}', '--workers=1', '--noprogress']
  assert render_raw.run(args + [str(bad)]) == 1
  assert render_raw.run(args + [str(bad), str(raws / 'a.kdc')]) == 0
  assert render_raw.run(args + [str(bad), str(raws / 'a.kdc')]) == 0  # Done.


@pytest.mark.parametrize('args, message', [
    (['--evs=-1,x'], 'Could not parse EV list'),
    (['--evs=0,0'], 'repeats'),
    (['--evs=0.00001'], 'no exact file-name tag'),
    (['--bits=12'], 'bits'),
    (['--tone_curve=film'], 'tone_curve'),
    (['--workers=0'], 'workers'),
])
def test_bad_flags_are_usage_errors(raws, tmp_path, args, message):
  with pytest.raises(app.UsageError, match=message):
    render_raw.run(args + [f'--output_dir={tmp_path / "out"}', str(raws)])
  assert not (tmp_path / 'out').exists()


def test_bad_inputs_are_usage_errors(raws, tmp_path):
  out = f'--output_dir={tmp_path / "out"}'
  with pytest.raises(app.UsageError, match='output_dir'):
    render_raw.run([str(raws)])
  with pytest.raises(app.UsageError, match='Give RAW files'):
    render_raw.run([out])
  (tmp_path / 'empty').mkdir()
  with pytest.raises(app.UsageError, match='No RAW files found'):
    render_raw.run([out, str(tmp_path / 'empty')])
  with pytest.raises(app.UsageError, match='neither a file nor a directory'):
    render_raw.run([out, str(tmp_path / 'missing.kdc')])
  shutil.copy(raws / 'a.kdc', raws / 'nested' / 'A.CR2')
  with pytest.raises(app.UsageError, match='share the name'):
    render_raw.run([out, str(raws)])


def test_find_raw_files(raws):
  found = render_raw.find_raw_files([raws, raws / 'notes.txt', raws / 'a.kdc'])
  assert sorted(p.name for p in found) == ['a.kdc', 'b.KDC', 'c.kdc',
                                           'notes.txt']


def test_camera_is_unknown_when_unreadable(shared_fixture, tmp_path):
  assert camera_tags.camera_make_model(tmp_path / 'missing.kdc') == {
      'make': 'unknown', 'model': 'unknown'}
  (tmp_path / 'text.raw').write_text('hello')
  camera = camera_tags.camera_make_model(tmp_path / 'text.raw')
  assert camera == {'make': 'unknown', 'model': 'unknown'}
  assert camera_tags.camera_make_model(shared_fixture(RAW))['model'] == (
      'Kodak Digital Science DC50 Zoom Camera')


class _Crash(Exception):
  """Stands for the process dying mid-run (not a per-file error)."""


def test_interrupted_run_resumes(raws, tmp_path, monkeypatch):
  out = tmp_path / 'out'
  evs = (-1.0, 0.0, 1.0)
  real_write_png = image_codec.write_png
  calls = []

  def crash_on_fifth_png(path, rgb):
    calls.append(path)
    if len(calls) == 5:  # a: 3 PNGs done; b: 1 done, the 2nd dies mid-write.
      pathlib.Path(f'{path}.partial').write_bytes(b'half a PNG')
      raise _Crash()
    real_write_png(path, rgb)

  monkeypatch.setattr(image_codec, 'write_png', crash_on_fifth_png)
  with pytest.raises(_Crash):
    render_raw.render_files([raws], out, evs, workers=1, progress=False)
  monkeypatch.undo()
  assert (out / 'a.json').exists() and not (out / 'b.json').exists()
  assert (out / 'b_N1.png').exists() and (out / 'b_0.png.partial').exists()
  (out / 'b_P3.png').write_bytes(b'stale render of an EV no longer wanted')
  (out / 'gone_0.png.partial').write_bytes(b'of a RAW no longer an input')
  finished = _stamps(out, 'a*')
  assert len(finished) == 4

  summary = render_raw.render_files([raws], out, evs, workers=1,
                                    progress=False)
  assert summary.skipped == [str(raws / 'a.kdc')]
  assert summary.rendered == [str(raws / 'b.KDC'), str(raws / 'nested/c.kdc')]
  assert _stamps(out, 'a*') == finished  # Not re-rendered.
  assert not list(out.glob('*.partial'))
  assert not (out / 'b_P3.png').exists()
  for stem in 'abc':
    assert sorted(p.name for p in out.glob(f'{stem}_*.png')) == [
        f'{stem}_0.png', f'{stem}_N1.png', f'{stem}_P1.png']
  assert json.loads((out / 'manifest.json').read_text())['count'] == 3

  (out / 'c_P1.png').unlink()  # A complete RAW missing an output is redone.
  summary = render_raw.render_files([raws], out, evs, workers=1,
                                    progress=False)
  assert summary.rendered == [str(raws / 'nested/c.kdc')]
  assert len(summary.skipped) == 2 and (out / 'c_P1.png').exists()


def test_other_settings_in_the_output_dir_stop_the_run(raws, tmp_path, caplog):
  out = tmp_path / 'out'
  args = [f'--output_dir={out}', '--workers=1', '--noprogress',
          str(raws / 'a.kdc')]
  assert render_raw.run(['--evs=0'] + args) == 0
  before = _stamps(out, '*')
  with pytest.raises(render_raw.SettingsMismatchError, match='a.json'):
    render_raw.render_files([raws / 'a.kdc'], out, (0.0,), bits=16, workers=1)
  assert render_raw.run(['--evs=0,1'] + args) == 1
  assert 'already holds renders that differ' in caplog.text
  assert _stamps(out, '*') == before  # Nothing was touched.
  other = tmp_path / 'other'  # A different RAW under the same stem.
  other.mkdir()
  (other / 'a.kdc').write_bytes((raws / 'a.kdc').read_bytes() + b'\0')
  with pytest.raises(render_raw.SettingsMismatchError, match='rendered from'):
    render_raw.render_files([other / 'a.kdc'], out, (0.0,), workers=1)


def test_module_cli_in_parallel_workers(raws, tmp_path, shared_fixture):
  """`python -m`: a process pool, logged failures and the summary line."""
  _truncated(shared_fixture, raws / 'broken.kdc')
  out = tmp_path / 'out'
  result = subprocess.run(
      [sys.executable, '-m', 'data_prep.render_raw', '--evs=-1,0',
       f'--output_dir={out}', '--workers=2', str(raws)],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
      env={**os.environ, 'PYTHONPATH': str(REPO_ROOT)})
  assert result.returncode == 0, result.stderr
  assert '3 rendered, 0 skipped (already done), 1 failed' in result.stdout
  assert 'broken.kdc' in result.stderr
  image = _decode(shared_fixture(RAW))
  for stem in 'abc':
    np.testing.assert_array_equal(_read_png(out / f'{stem}_N1.png'),
                                  raw_render.expose(image, -1.0))
  assert json.loads((out / 'manifest.json').read_text())['count'] == 3

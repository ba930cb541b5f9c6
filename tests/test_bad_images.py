"""One set of bad and unusual image files through every consumer.

The set: truncated JPEG and PNG, 0 bytes, text named .png, a header claiming
100k x 100k pixels (refused); grayscale 8 / 16 bit, RGBA, palette, CMYK JPEG
and an EXIF-rotated JPEG (converted). Each goes through every builder
(msec, sice, lcdp, lol, multi_exposure/rendered), the training input pipeline, `evaluate`, `Corrector` and the
correct CLI: converted as `image_codec.decode_image` documents, or refused
with a message naming the file. The build policy: train keeps every usable
pair (counted) and names each left out; a corrupt target leaves out all its
inputs; a bad test split fails naming every bad file at once, unless
--allow_incomplete, whose omissions then reach the evaluation report.
Memory: refusing the huge header and the stride-0 .pth is measured in a
subprocess (maximum resident set size and time).
"""

import io
import json
import pathlib
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
from PIL import Image
import pytest

from data_prep import build
from data_prep import image_codec
from expcorr_jax import config_args
from expcorr_jax import correct
from expcorr_jax import evaluate
from expcorr_jax import inference
from expcorr_jax import input_pipeline
import checkpoint_writer  # tests/ is on sys.path.
import pth_writer
import test_inference

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
H, W = 12, 16


def _base(seed=0) -> np.ndarray:
  """Smooth pixels (JPEG keeps them within a few codes)."""
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0.1, 0.9, H)[:, None, None] * np.linspace(0.5, 1, W)[
      :, None]
  return np.round(np.clip(ramp * rng.uniform(0.5, 1, 3), 0, 1) * 255).astype(
      np.uint8)


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data)))
  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) +
          chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b''))


def bad_and_unusual_files() -> dict[str, tuple[str, bytes, object]]:
  """name -> (extension, file bytes, expected): an HxWx3 array it decodes
  to (compared within `tolerance`), or a regex of why it is refused."""
  base = _base()
  gray = base[..., 1]
  gray16 = (gray.astype(np.uint16) * 257 + 3)
  rgba = np.concatenate([base, np.full((H, W, 1), 7, np.uint8)], axis=-1)
  palette = Image.fromarray(base).convert('P')
  jpeg = _encoded(Image.fromarray(base), 'JPEG', quality=95)
  png = _encoded(Image.fromarray(base), 'PNG')
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotate 90 degrees clockwise to view.
  stored = np.ascontiguousarray(np.rot90(base, k=1))  # W x H as stored.
  return {
      'truncated_jpeg': ('.jpg', jpeg[:len(jpeg) // 2],
                         'Corrupt or unsupported'),
      'truncated_png': ('.png', png[:len(png) // 2], 'Corrupt or unsupported'),
      'empty': ('.png', b'', r'empty \(0 bytes\)'),
      'text': ('.png', b'just some text, not a picture\n',
               'Corrupt or unsupported'),
      'huge_header': ('.png', _png_claiming(100_000, 100_000),
                      r'100000x100000 = 10,000,000,000 pixels, over the cap'),
      'gray8': ('.png', _encoded(Image.fromarray(gray), 'PNG'),
                np.repeat(gray[..., None], 3, -1)),
      'gray16': ('.png', cv2.imencode('.png', gray16)[1].tobytes(),
                 np.repeat(gray16[..., None], 3, -1)),
      'rgba': ('.png', _encoded(Image.fromarray(rgba), 'PNG'), base),
      'palette': ('.png', _encoded(palette, 'PNG'),
                  np.asarray(palette.convert('RGB'))),
      'cmyk': ('.jpg', _encoded(Image.fromarray(base).convert('CMYK'), 'JPEG',
                                quality=100), base),
      'exif_rotated': ('.jpg', _encoded(Image.fromarray(stored), 'JPEG',
                                        quality=95, exif=exif), base),
  }


FILES = bad_and_unusual_files()
REFUSED = sorted(n for n, (_, _, e) in FILES.items() if isinstance(e, str))
CONVERTED = sorted(n for n in FILES if n not in REFUSED)
TOLERANCE = {'cmyk': 6, 'exif_rotated': 6}  # JPEG; lossless ones exactly.


def _check(name: str, decoded: np.ndarray) -> None:
  expected = FILES[name][2]
  assert decoded.shape == (H, W, 3), name
  assert decoded.dtype == expected.dtype, name
  difference = np.abs(decoded.astype(int) - expected.astype(int)).max()
  assert difference <= TOLERANCE.get(name, 0), (name, difference)


@pytest.mark.parametrize('name', sorted(FILES))
def test_decode_converts_or_refuses(name):
  extension, data, expected = FILES[name]
  del extension
  if name in REFUSED:
    with pytest.raises(image_codec.ImageDecodeError, match=expected):
      image_codec.decode_image(data)
  else:
    _check(name, image_codec.decode_image(data))


def _target_for(name: str) -> np.ndarray:
  """A lossless target of the converted input's size and depth."""
  expected = FILES[name][2]
  return (expected if expected.dtype == np.uint8 else
          (expected // 257).astype(np.uint8))


def _msec(root: pathlib.Path, split_folder: str, names, *,
          bad_target: str | None = None) -> None:
  """An MSEC split: each file as `<name>_N1` (and a good `<name>_P1`)."""
  inputs = root / split_folder / 'INPUT_IMAGES'
  inputs.mkdir(parents=True)
  if split_folder == 'training':
    targets = root / split_folder / 'GT_IMAGES'
  else:
    targets = root / split_folder / 'expert_c_testing_set'
  targets.mkdir(parents=True)
  for name in names:
    extension, data, _ = FILES[name]
    (inputs / f'{name}_N1{extension}').write_bytes(data)
    image_codec.write_png(inputs / f'{name}_P1.png', _base(1))
    image_codec.write_png(targets / f'{name}.png', _base(2))
  if bad_target is not None:
    (targets / f'{bad_target}.png').write_bytes(FILES['truncated_png'][1])


def test_builder_keeps_every_usable_pair_and_names_the_rest(tmp_path,
                                                            caplog):
  manual = tmp_path / 'MSEC'
  _msec(manual, 'training', sorted(FILES), bad_target='gray8')
  data_dir = tmp_path / 'tfds'
  build.ensure_prepared('msec', data_dir, manual)
  source = build.data_source('msec', 'train', data_dir)
  names = sorted(input_pipeline.eval_pair_label(source, i)[0]
                 for i in range(len(source)))
  # Every P1 input and every convertible N1 input, but both of gray8's (its
  # target is corrupt).
  expected = sorted([f'{n}_P1' for n in FILES if n != 'gray8'] +
                    [f'{n}_N1' for n in CONVERTED if n != 'gray8'])
  assert names == expected
  left_out = build.omissions('msec', 'train', data_dir)
  reasons = {item['example']: item['reason'] for item in left_out}
  for name in REFUSED:
    key = f'training/INPUT_IMAGES/{name}_N1{FILES[name][0]}'
    assert key in reasons, name
    assert any(part in reasons[key] for part in (
        'Corrupt or unsupported', 'empty', 'over the cap')), reasons[key]
  for tag in ('N1.png', 'P1.png'):
    assert ('its target training/GT_IMAGES/gray8.png is unusable' in
            reasons[f'training/INPUT_IMAGES/gray8_{tag}'])
  assert len(left_out) == len(REFUSED) + 2
  assert 'left out 7 example(s)' in caplog.text
  metadata = json.loads((pathlib.Path(
      build.get_builder('msec', data_dir).data_dir) / 'metadata.json'
                         ).read_text())
  assert metadata['kept'] == {'train': len(expected)}

  # The stored bytes decode, in the training pipeline and in evaluation,
  # to the documented conversion.
  sample = input_pipeline.PairedSample(crop_size=None, flip=False)
  for index in range(len(source)):
    record = source[index]
    name = input_pipeline.text(record['name'])
    stem = name.rsplit('_', 1)[0]
    if not name.endswith('_N1'):
      continue
    _check(stem, sample.random_map(record, np.random.default_rng(0))['input'])
    _check(stem, input_pipeline.read_eval_pair(source, index).input)


def test_a_pair_of_two_sizes_is_left_out_not_stretched(tmp_path):
  manual = tmp_path / 'MSEC'
  _msec(manual, 'training', ['gray8', 'rgba'])
  image_codec.write_png(manual / 'training' / 'GT_IMAGES' / 'rgba.png',
                        np.zeros((H + 2, W, 3), np.uint8))
  build.ensure_prepared('msec', tmp_path / 'tfds', manual)
  (item,) = [o for o in build.omissions('msec', 'train', tmp_path / 'tfds')
             if 'rgba_N1' in o['example']]
  assert (f'the input is {W}x{H} but its target training/GT_IMAGES/rgba.png '
          f'is {W}x{H + 2}') in item['reason']


def test_a_bad_test_split_fails_naming_every_file_unless_allowed(tmp_path):
  manual = tmp_path / 'MSEC'
  _msec(manual, 'testing', ['gray8', 'empty', 'text', 'cmyk'])
  with pytest.raises(ValueError) as error:
    build.ensure_prepared('msec', tmp_path / 'tfds', manual)
  message = str(error.value)
  assert 'the test split has 2 bad or missing file(s)' in message
  assert 'testing/INPUT_IMAGES/empty_N1.png' in message
  assert 'testing/INPUT_IMAGES/text_N1.png' in message
  assert '--allow_incomplete' in message
  assert not build.get_builder('msec', tmp_path / 'tfds').is_prepared()

  build.ensure_prepared('msec', tmp_path / 'tfds', manual,
                        allow_incomplete=True)
  omitted = build.omissions('msec', 'test', tmp_path / 'tfds')
  assert sorted(o['example'] for o in omitted) == [
      'testing/INPUT_IMAGES/empty_N1.png', 'testing/INPUT_IMAGES/text_N1.png']

  # Every evaluation report made from it repeats the omissions.
  outputs = tmp_path / 'outputs'
  outputs.mkdir()
  source = build.data_source('msec', 'test', tmp_path / 'tfds')
  for index in range(len(source)):
    pair = input_pipeline.read_eval_pair(source, index)
    image_codec.write_png(outputs / f'{pair.name}.png', pair.target)
  config = config_args.load_config(REPO_ROOT / 'configs' / 'uec.py')
  config.data.name, config.data.eval_split = 'msec', 'test'
  config.data.data_dir = str(tmp_path / 'tfds')
  config.eval.protocols = ('full',)
  evaluate.evaluate_checkpoint(config, None, str(tmp_path / 'eval'),
                               outputs_dir=str(outputs))
  report = json.loads((tmp_path / 'eval' / 'eval_msec_test.json').read_text())
  assert [o['example'] for o in report['dataset_omissions']] == [
      o['example'] for o in omitted]
  assert (tmp_path / 'eval' / 'eval_msec_test.txt').read_text().startswith(
      'NOTE: the test split was built without 2 example(s)')
  # A bad output file is named too.
  (outputs / 'cmyk_N1.png').write_bytes(FILES['truncated_png'][1])
  with pytest.raises(image_codec.ImageDecodeError, match='cmyk_N1.png'):
    evaluate.evaluate_checkpoint(config, None, str(tmp_path / 'eval2'),
                                 outputs_dir=str(outputs))


def test_corrector_and_cli_convert_or_name_each_file(tmp_path, caplog):
  workdir = tmp_path / 'workdir'
  checkpoint_writer.write_params_checkpoint(
      workdir, test_inference.random_uec_params(),
      {'model': 'uec', 'model_encoder_height': test_inference.ENCODER_HEIGHT})
  corrector = inference.Corrector.from_checkpoint(workdir)
  reference = _base(3)
  folder = tmp_path / 'photos'
  folder.mkdir()
  for name, (extension, data, _) in FILES.items():
    (folder / f'{name}{extension}').write_bytes(data)
    if name in CONVERTED:
      output = corrector(image_codec.decode_image(data), reference)
      assert output.shape == (H, W, 3) and np.all(np.isfinite(output)), name
  reference_path = tmp_path / 'reference.png'
  image_codec.write_png(reference_path, reference)
  out = tmp_path / 'out'
  status = correct.run([f'--checkpoint={workdir}',
                        f'--reference={reference_path}',
                        f'--output_dir={out}', '--noprogress', str(folder)])
  assert status == 0
  assert sorted(p.stem for p in out.glob('*.png')) == CONVERTED
  for name in REFUSED:
    assert f'{name}{FILES[name][0]}' in caplog.text, name
  assert 'over the cap' in caplog.text


def _peak_memory_and_time(imports: str, code: str
                          ) -> tuple[float, float, str]:
  """Runs `code` in a fresh interpreter after `imports`: (how much it raised
  the peak resident set size in MiB, seconds, its output)."""
  wrapper = (
      'import resource, time\n' + imports + '\n'
      'before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n'
      'start = time.time()\n' + code + '\n'
      'print("RSS", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - '
      'before) / 1024, "TIME", time.time() - start)\n')
  result = subprocess.run([sys.executable, '-c', wrapper], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300,
                          check=True)
  words = result.stdout.split()
  return (float(words[words.index('RSS') + 1]),
          float(words[words.index('TIME') + 1]), result.stdout)


def _assert_refused_cheaply(imports: str, call: str, error: str,
                            expected: str, max_seconds: float) -> None:
  """`call` (after `imports`) raises `error` naming `expected`, adding under
  32 MiB to the peak RSS in under `max_seconds` (a fresh interpreter)."""
  rss, seconds, output = _peak_memory_and_time(imports, f'''
try:
  {call}
except {error} as e:
  print('REFUSED', e)
''')
  assert 'REFUSED' in output and expected in output, output
  print(f'{call}: +{rss:.1f} MiB, {seconds:.3f} s')
  assert rss < 32 and seconds < max_seconds, (rss, seconds)


def test_refusals_allocate_little_memory(tmp_path):
  bomb = tmp_path / 'huge.png'
  bomb.write_bytes(FILES['huge_header'][1])
  _assert_refused_cheaply(
      'from data_prep import image_codec',
      f'image_codec.read_image({str(bomb)!r})', 'image_codec.ImageDecodeError',
      'over the cap', max_seconds=2)

  # The 1.5 KB .pth of one element expanded by stride 0 to 50000 x 50000
  # (10 GB if materialised).
  stride0 = tmp_path / 'stride0.pth'
  pth_writer.write_zip(stride0, pth_writer.pickle(pth_writer.ordered_dict([(
      'w', pth_writer.tensor('0', np.dtype(np.float32), 1, 0, (50000, 50000),
                             (0, 0)))])), {'0': np.ones(1, np.float32).tobytes()})
  _assert_refused_cheaply(
      'from expcorr_jax.weights import unpickling',
      f'unpickling.load_state_dict({str(stride0)!r})',
      'unpickling.UnsafeCheckpointError', '50000', max_seconds=1)


def _layout(builder: str, root: pathlib.Path) -> None:
  """Each file of FILES as an input (or frame) of `builder`'s layout, with a
  good lossless target (or second frame) of the decoded size."""
  folders = {
      'sice': ('train/low', 'train/mid'),
      'lcdp': ('input', 'gt'),
      'lol/v1': ('our485/low', 'our485/high'),
      'multi_exposure/rendered': ('neg1', '0'),
  }[builder]
  for folder in folders:
    (root / folder).mkdir(parents=True)
  for name, (extension, data, _) in FILES.items():
    (root / folders[0] / f'{name}{extension}').write_bytes(data)
    image_codec.write_png(root / folders[1] / f'{name}.png', _base(2))


@pytest.mark.parametrize('builder', ['sice', 'lcdp', 'lol/v1',
                                     'multi_exposure/rendered'])
def test_every_builder_keeps_the_usable_and_names_the_rest(builder, tmp_path):
  _layout(builder, tmp_path / 'manual')
  data_dir = tmp_path / 'tfds'
  build.ensure_prepared(builder, data_dir, tmp_path / 'manual')
  splits = list(build.get_builder(builder, data_dir).info.splits)
  stored = {}
  for split in splits:
    source = build.data_source(builder, split, data_dir)
    for index in range(len(source)):
      record = source[index]
      if builder.startswith('multi_exposure'):
        stored[input_pipeline.text(record['scene'])] = record['frames'][0]
      else:
        stored[input_pipeline.text(record['name'])] = record['input']
  assert sorted(stored) == CONVERTED
  for name, data in stored.items():
    _check(name, input_pipeline.decode(data))
  left_out = [item for split in splits + [''] for item in
              build.omissions(builder, split, data_dir)]
  named = sorted(name for name in REFUSED
                 if any(name in item['example'] or name in item['reason']
                        for item in left_out))
  assert named == REFUSED and len(left_out) == len(REFUSED)

"""Real photos and corrupted copies of them, for the PyIQA SSIM goldens.

The same (output, target) pairs are made here for the test and for
`tests/data/make_pyiqa_goldens.py`, which scored them once with PyIQA
(see tests/data/pyiqa_ssim_golden.json for the command and versions).
Targets are scikit-image's bundled photos (several sizes, odd ones too);
each output is a deterministic corruption, one of which inverts a patch so
that some windows are anti-correlated (PyIQA clips those at 0).

  python tests/pyiqa_pairs.py OUT.npz   # the pairs, for the golden script
"""

import sys

import numpy as np
import skimage.data


def _gamma_noise(image, rng):
  out = 255 * (image / 255.0) ** 0.7 + rng.normal(0, 6, image.shape)
  return out


def _blur(image, rng):
  del rng
  padded = np.pad(image.astype(np.float64), ((2, 2), (2, 2), (0, 0)),
                  mode='edge')
  h, w = image.shape[:2]
  return sum(padded[i:i + h, j:j + w] for i in range(5) for j in range(5)) / 25


def _brighter(image, rng):
  del rng
  return image.astype(np.float64) + 40


def _inverted_patch(image, rng):
  del rng
  out = image.astype(np.float64).copy()
  h, w = image.shape[:2]
  out[h // 4:h // 2, w // 4:w // 2] = 255 - out[h // 4:h // 2, w // 4:w // 2]
  return out


def _channels_swapped(image, rng):
  return image[..., ::-1].astype(np.float64) + rng.normal(0, 2, image.shape)


_PAIRS = (  # (photo, corruption)
    ('astronaut', _gamma_noise),
    ('coffee', _blur),
    ('chelsea', _brighter),
    ('rocket', _inverted_patch),
    ('hubble_deep_field', _channels_swapped),
    ('coffee', None),  # Identical: SSIM 1.
)


def pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
  """(name, uint8 output, uint8 target) pairs."""
  made = []
  for index, (photo, corrupt) in enumerate(_PAIRS):
    target = getattr(skimage.data, photo)()[..., :3]
    rng = np.random.default_rng(index)
    output = target if corrupt is None else np.clip(
        np.round(corrupt(target, rng)), 0, 255).astype(np.uint8)
    name = f'{photo}_{corrupt.__name__.strip("_") if corrupt else "same"}'
    made.append((name, output, target))
  return made


if __name__ == '__main__':
  np.savez_compressed(sys.argv[1], **{
      f'{name}_{kind}': image for name, output, target in pairs()
      for kind, image in (('output', output), ('target', target))})

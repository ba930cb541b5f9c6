"""Tiny stand-ins of the public datasets, each in its official folder layout.

For tests that run the README's commands on them (tests/test_readme_recipes.py):
a few scenes per split of smooth 56x40 photos, the file names and extensions
the downloads use, so the builders read them as they read the real folders.

  MSEC        {training,validation,testing}/INPUT_IMAGES/<scene>_<tag>.JPG,
              {training,validation}/GT_IMAGES/<scene>.jpg,
              testing/expert_{a..e}_testing_set/<scene>.jpg
  radiometry  {neg3,neg2,neg1,0,pos1,pos2,pos3}/<name>.jpg, train_input.txt
  SICE        {train,test}/{low,over,mid}/<id>.JPG
  LCDP        {input,gt,valid-input,valid-gt,test-input,test-gt}/<name>.png
  LOL         {our485,eval15}/{low,high}/<id>.png
"""

import pathlib

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 56, 40
MSEC_TAGS = ('N1.5', 'N1', '0', 'P1', 'P1.5')
MSEC_SCENES = {
    # The README's reference image is training/GT_IMAGES/<the first>.jpg.
    'training': ('a0001-jmac_DSC1459', 'a0002-dgw_005', 'a0003-NKIM_MG_8178',
                 'a0004-jmac_MG_1384'),
    'validation': ('a4501-Duggan_090124_4432',),
    'testing': ('a4980-jmac_DSC0048', 'a4981-kme_609'),
}
RADIOMETRY_FOLDERS = ('neg3', 'neg2', 'neg1', '0', 'pos1', 'pos2', 'pos3')
RADIOMETRY_TRAIN = ('a0001', 'a0002', 'a0003')  # The release's train list.
RADIOMETRY_OTHER = ('a0004', 'a0005')  # Not listed: the validation split.


def photo(seed: int, gain: float = 1.0) -> np.ndarray:
  """A smooth HEIGHT x WIDTH uint8 photo (gradients, a blob, mild noise)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:HEIGHT, 0:WIDTH] / np.array([HEIGHT, WIDTH])[:, None, None]
  centre = rng.uniform(0.2, 0.8, 2)
  blob = np.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / 0.05)
  base = (0.2 + 0.5 * x * rng.uniform(0.3, 1)) + 0.3 * blob
  image = base[..., None] * rng.uniform(0.5, 1.0, 3)
  image += rng.normal(0, 0.01, image.shape)
  return np.round(np.clip(image * gain, 0, 1) * 255).astype(np.uint8)


def write_photo(path: pathlib.Path, seed: int, gain: float = 1.0) -> None:
  """Writes `photo(seed, gain)`; JPEG or PNG after the extension."""
  path.parent.mkdir(parents=True, exist_ok=True)
  image_format = 'JPEG' if path.suffix.lower() in ('.jpg', '.jpeg') else 'PNG'
  Image.fromarray(photo(seed, gain)).save(path, format=image_format,
                                          quality=95)


def _gain(ev: float) -> float:
  return 2.0 ** ev


def make_msec(root: pathlib.Path) -> None:
  """MSEC (Afifi et al.): renders at five EVs, expert retouches as targets."""
  seed = 0
  for split, scenes in MSEC_SCENES.items():
    for scene in scenes:
      seed += 1
      for tag, ev in zip(MSEC_TAGS, (-1.5, -1, 0, 1, 1.5)):
        write_photo(root / split / 'INPUT_IMAGES' / f'{scene}_{tag}.JPG', seed,
                    _gain(ev))
      if split == 'testing':
        for expert in 'abcde':
          write_photo(root / split / f'expert_{expert}_testing_set' /
                      f'{scene}.jpg', seed, 1.0 + 0.02 * 'abcde'.index(expert))
      else:
        write_photo(root / split / 'GT_IMAGES' / f'{scene}.jpg', seed)


def make_radiometry(root: pathlib.Path) -> None:
  """UEC's radiometry set: one folder per EV, the release's train list."""
  for seed, name in enumerate(RADIOMETRY_TRAIN + RADIOMETRY_OTHER, 100):
    for folder, ev in zip(RADIOMETRY_FOLDERS, range(-3, 4)):
      write_photo(root / folder / f'{name}.jpg', seed, _gain(ev / 2))
  (root / 'train_input.txt').write_text(
      ''.join(f'{name}.jpg\n' for name in RADIOMETRY_TRAIN))


def make_sice(root: pathlib.Path) -> None:
  """SICE as ENC/FECNet repackage it: under, over and the mid target."""
  for split, ids in (('train', ('1', '2', '3')), ('test', ('4', '5'))):
    for image_id in ids:
      seed = 200 + int(image_id)
      for folder, gain in (('low', 0.4), ('over', 2.5), ('mid', 1.0)):
        write_photo(root / split / folder / f'{image_id}.JPG', seed, gain)


def make_lcdp(root: pathlib.Path) -> None:
  """LCDP: input/gt pairs per split (mixed exposure: a half-dark input)."""
  folders = {('input', 'gt'): ('a1', 'a2', 'a3'),
             ('valid-input', 'valid-gt'): ('v1',),
             ('test-input', 'test-gt'): ('t1', 't2')}
  seed = 300
  for (input_folder, target_folder), names in folders.items():
    for name in names:
      seed += 1
      target = photo(seed)
      mixed = target.astype(np.float32)
      mixed[:, :WIDTH // 2] *= 0.3
      mixed[:, WIDTH // 2:] = np.minimum(mixed[:, WIDTH // 2:] * 2.0, 255)
      for folder, image in ((input_folder, mixed), (target_folder, target)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image).astype(np.uint8)).save(
            root / folder / f'{name}.png')


def make_lol(root: pathlib.Path) -> None:
  """LOL v1: our485 (train) and eval15 (test), low and high."""
  for split, ids in (('our485', ('2', '5', '9')), ('eval15', ('1', '22'))):
    for image_id in ids:
      seed = 400 + int(image_id)
      write_photo(root / split / 'low' / f'{image_id}.png', seed, 0.15)
      write_photo(root / split / 'high' / f'{image_id}.png', seed)


def make_all(home: pathlib.Path) -> dict[str, pathlib.Path]:
  """Every layout under `home` as the README names them (~/MSEC, ...)."""
  roots = {name: home / name
           for name in ('MSEC', 'radiometry', 'SICE', 'LCDP', 'LOL')}
  make_msec(roots['MSEC'])
  make_radiometry(roots['radiometry'])
  make_sice(roots['SICE'])
  make_lcdp(roots['LCDP'])
  make_lol(roots['LOL'])
  return roots

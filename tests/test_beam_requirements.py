"""The Beam workers' requirements file pins what this install runs.

Workers unpickle what the driver pickled, so `data_prep/beam_requirements.txt`
must name the versions of .ci/constraints.txt (the ones the suite passes
with); a dependency upgrade that forgets it fails here.
"""

import pathlib
import re

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pins(path: pathlib.Path) -> dict[str, str]:
  pins = {}
  for line in path.read_text().splitlines():
    line = line.split('#', 1)[0].strip()
    if line:
      name, version = line.split('==')
      pins[re.sub(r'[-_.]+', '-', name).lower()] = version
  return pins


def test_worker_requirements_match_the_constraints():
  workers = _pins(REPO_ROOT / 'data_prep' / 'beam_requirements.txt')
  constraints = _pins(REPO_ROOT / '.ci' / 'constraints.txt')
  assert {'rawpy', 'tensorflow-datasets', 'array-record', 'gcsfs'} <= set(
      workers)
  assert {name: constraints.get(name) for name in workers} == workers

"""Writes tests/data/uec_sample_golden.json (see tests/uec_sample_golden.py).

Made once on the code of commit 2a6b555 (multi_exposure 1.1.0: whole
encoded frames in scene records) with
  git worktree add /tmp/v1 2a6b555
  cp tests/uec_sample_golden.py /tmp/v1/tests/
  cp tests/data/make_uec_sample_golden.py /tmp/v1/tests/data/
  (cd /tmp/v1 && python tests/data/make_uec_sample_golden.py)
  cp /tmp/v1/tests/data/uec_sample_golden.json tests/data/
"""

import json
import os
import pathlib
import sys
import tempfile

# The tests' simulated devices (tests/conftest.py).
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import uec_sample_golden  # pylint: disable=g-import-not-at-top
from data_prep import build  # pylint: disable=g-import-not-at-top

with tempfile.TemporaryDirectory() as tmp:
  build.ensure_prepared('multi_exposure/sample', f'{tmp}/data')
  found = uec_sample_golden.figures(f'{tmp}/data', f'{tmp}/workdir')
uec_sample_golden.GOLDEN.write_text(json.dumps(found, indent=1) + '\n')
print(json.dumps(found['losses']))

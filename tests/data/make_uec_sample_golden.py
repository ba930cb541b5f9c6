"""Writes tests/data/uec_sample_golden.json (see tests/uec_sample_golden.py).

Made once at commit 2a6b555 (multi_exposure 1.1.0: whole encoded frames in
scene records) with
  python tests/data/make_uec_sample_golden.py
"""

import json
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import uec_sample_golden  # pylint: disable=g-import-not-at-top
from data_prep import build  # pylint: disable=g-import-not-at-top

with tempfile.TemporaryDirectory() as tmp:
  build.ensure_prepared('multi_exposure/sample', f'{tmp}/data')
  found = uec_sample_golden.figures(f'{tmp}/data', f'{tmp}/workdir')
uec_sample_golden.GOLDEN.write_text(json.dumps(found, indent=1) + '\n')
print(json.dumps(found['losses']))

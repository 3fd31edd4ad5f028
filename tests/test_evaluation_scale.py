"""`evaluate.py` over many devices and processes writes the same outputs.

A small DAVIS-layout set (four videos of 2 to 6 frames) is evaluated with
the bundled model

* in this process on one device, one video at a time (the reference);
* as one process with 4 fake CPU devices and `video_batch=2` (8 lanes);
* as 2 processes x 2 fake CPU devices (`--distributed`, a localhost
  coordinator), each taking its share of the videos;

and every mask file, the claim (`model.json`) and `summary.json` (less its
timings, memory and device counts) are identical. A slow test kills one
of two processes during its second video: the survivor ends with the
distributed runtime's error, and the same command run again segments only
what was not finished.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from cfbi_jax import evaluation
from cfbi_jax import synthetic
from configs import eval as eval_config
from tests import synthetic_layouts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MEASURED = (
    'seconds',
    'fps',
    'total_seconds',
    'peak_memory_mb',
    'compilations',
    'device',
    'devices',
    'video_batch',
)


@pytest.fixture(scope='module')
def davis_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('davis'))
  names = []
  for v, length in enumerate((6, 2, 5, 3)):
    frames, labels = synthetic_layouts.render_video(length, (72, 96), 40 + v)
    name = f'video{v}'
    synthetic.write_video(
        os.path.join(root, 'JPEGImages', '480p', name),
        os.path.join(root, 'Annotations', '480p', name),
        frames,
        labels,
    )
    names.append(name)
  synthetic.add_to_split(root, 'train', names)
  return root


def _args(root, out):
  return synthetic_layouts.evaluate_args(root, out) + [
      '--config.compilation_cache_dir=',
  ]


class _Run:
  """A command running with its output in files (pipes could fill while
  another process of the run waits for it)."""

  def __init__(self, args, devices, env, log):
    self.log = log
    with open(log + '.out', 'w') as out, open(log + '.err', 'w') as err:
      self.process = subprocess.Popen(
          [sys.executable, os.path.join(REPO, 'evaluate.py'), *args],
          cwd=REPO,
          env=dict(
              env,
              XLA_FLAGS=(f'--xla_force_host_platform_device_count={devices}'),
          ),
          stdout=out,
          stderr=err,
      )

  def wait(self):
    """`(return code, stdout, stderr)` once it has ended."""
    code = self.process.wait(timeout=600)
    with open(self.log + '.out') as out, open(self.log + '.err') as err:
      return code, out.read(), err.read()


def _launch(args, devices, log, env=None, **extra_env):
  env = env or dict(os.environ, PYTHONPATH=REPO)
  return _Run(args, devices, dict(env, **extra_env), log)


def _two_processes(args, log, devices=2, heartbeat_s=100, env=None):
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  return [
      _launch(
          ['--distributed', f'--heartbeat_timeout_s={heartbeat_s}', *args],
          devices,
          f'{log}_{i}',
          env,
          JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
          JAX_NUM_PROCESSES='2',
          JAX_PROCESS_ID=str(i),
      )
      for i in range(2)
  ]


def _files(out):
  """`{relative path: bytes}` of the masks and the claim."""
  found = {}
  for folder, _, names in os.walk(out):
    for name in names:
      path = os.path.join(folder, name)
      rel = os.path.relpath(path, out)
      if name.endswith('.png') or name == 'model.json':
        with open(path, 'rb') as f:
          found[rel] = f.read()
  return found


def _summary(out):
  with open(os.path.join(out, 'summary.json')) as f:
    summary = json.load(f)
  for row in summary['sequences']:
    for key in _MEASURED:
      row.pop(key, None)
  for key in _MEASURED:
    summary.pop(key, None)
  return summary


def test_devices_processes_and_lanes_write_the_same(davis_root, tmp_path):
  outs = {name: str(tmp_path / name) for name in ('one', 'lanes', 'hosts')}
  lanes = _launch(
      _args(davis_root, outs['lanes']) + ['--config.video_batch=2'],
      4,
      str(tmp_path / 'lanes'),
  )
  hosts = _two_processes(
      _args(davis_root, outs['hosts']), str(tmp_path / 'hosts')
  )
  config = eval_config.get_config('dataset=davis2017')
  config.checkpoint = 'tiny_cfbi_synthetic'
  config.data.root, config.data.split = davis_root, 'train'
  config.output_dir, config.score = outs['one'], False
  config.compilation_cache_dir = ''
  evaluation.run(config)
  for run in [lanes] + hosts:
    code, _, err = run.wait()
    assert code == 0, err[-3000:]
  reference = _files(outs['one'])
  assert len([p for p in reference if p.endswith('.png')]) == 16
  for name in ('lanes', 'hosts'):
    files = _files(outs[name])
    assert sorted(files) == sorted(reference), name
    for path, data in reference.items():
      assert files[path] == data, (name, path)
    assert _summary(outs[name]) == _summary(outs['one']), name
  with open(os.path.join(outs['lanes'], 'summary.json')) as f:
    summary = json.load(f)
  assert (summary['devices'], summary['video_batch']) == (4, 2)
  # The hosts' per-process row files were merged and removed.
  assert not [n for n in os.listdir(outs['hosts']) if n.startswith('.rows')]


_KILL_ON_SECOND = """
import os, signal
from cfbi_jax import evaluation
segment = evaluation.segment_sequence
seen = []
def segment_sequence(*args, **kwargs):
  seen.append(1)
  if len(seen) == 2 and os.environ.get('JAX_PROCESS_ID') == '1':
    os.kill(os.getpid(), signal.SIGKILL)
  return segment(*args, **kwargs)
evaluation.segment_sequence = segment_sequence
"""


@pytest.mark.slow
def test_a_killed_process_leaves_its_finished_videos(davis_root, tmp_path):
  hook = tmp_path / 'hook'
  hook.mkdir()
  (hook / 'sitecustomize.py').write_text(_KILL_ON_SECOND)
  out = str(tmp_path / 'out')
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hook), REPO]))
  runs = _two_processes(
      _args(davis_root, out),
      str(tmp_path / 'killed'),
      devices=1,
      heartbeat_s=10,
      env=env,
  )
  codes = [run.wait()[0] for run in runs]
  assert codes[1] == -signal.SIGKILL and codes[0] != 0, codes
  finished = sorted(os.listdir(os.path.join(out, '.inputs')))
  assert 1 <= len(finished) < 4, finished
  runs = _two_processes(
      _args(davis_root, out), str(tmp_path / 'again'), devices=1
  )
  ended = [run.wait() for run in runs]
  assert [e[0] for e in ended] == [0, 0], ended[0][2][-2000:]
  assert f'reusing {len(finished)} of 4 sequences' in ended[0][1]
  assert len(os.listdir(os.path.join(out, '.inputs'))) == 4

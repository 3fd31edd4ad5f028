"""Multi-host training for real: two processes on this machine.

`train.py --distributed` runs as two processes with two fake CPU devices
each, joined by JAX's distributed runtime (a localhost coordinator, gloo
collectives), reading the TFDS records a multi-host run is recommended to
use. Nothing in the training code knows it is a simulation: a GPU cluster
takes the same path. Checked against the same recipe run by one process
with one device and by one process with four devices:

* after 2 steps the two processes' checkpoint holds the parameters of the
  one-device and the four-device runs (float tolerance: the gradient
  all-reduce sums in another order);
* each process read its own contiguous half of every global batch, and the
  halves together are the one-process batches (`train.log_examples`);
* that checkpoint restores in one process (this one); a two-process
  restart resumes from step 2 with the next slices of the data and its
  step 3 matches the one-device run's step 3 to 1% of the step's size
  (step 3 grows the 6e-8 differences of step 2 to about 1e-4);
* when one process is killed, the other exits with the distributed
  runtime's error within the heartbeat timeout instead of hanging.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from cfbi_jax import sharding
from cfbi_jax import trainer
from configs import ytvos as ytvos_config
from tests import synthetic_layouts
from tests.test_input_pipeline import load_builder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEARTBEAT_S = 10
GLOBAL_BATCH = 4


@pytest.fixture(scope='module')
def records(tmp_path_factory):
  """TFDS records of a tiny YouTube-VOS layout: (name, data_dir)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  root = synthetic_layouts.write_youtube_vos(str(tmp_path_factory.mktemp('y')))
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  module = load_builder('youtube_vos', 'cfbi_test_builder_youtube_vos')
  builder = module.CfbiYoutubeVos(data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=root)
  )
  return builder.name, data_dir


def overrides(records, steps):
  """The run, as config fields (for the command line and in-process)."""
  name, data_dir = records
  return {
      'data.source': 'tfds',
      'data.tfds_name': name,
      'data.tfds_data_dir': data_dir,
      'train.steps': steps,
      'optim.total_steps': 3,
      'train.batch_size': GLOBAL_BATCH,
      'train.log_every': 1,
      'train.checkpoint_every': 1,
      'train.log_examples': True,
      'compilation_cache_dir': '',
  }


def train_py(workdir, fields, devices, distributed=None):
  """Starts train.py; `distributed=(port, process_id)` joins a 2-process run."""
  # Every run compiles with the same cheaper LLVM settings (a third less
  # CPU time); the runs compared are then the same programs.
  env = dict(
      os.environ,
      PYTHONPATH=REPO,
      JAX_PLATFORMS='cpu',
      XLA_FLAGS=(
          f'--xla_force_host_platform_device_count={devices} '
          '--xla_backend_optimization_level=0 '
          '--xla_llvm_disable_expensive_passes=true'
      ),
  )
  args = [
      sys.executable,
      'train.py',
      '--config=configs/ytvos.py:runlocal',
      f'--workdir={workdir}',
  ] + [f'--config.{k}={v}' for k, v in fields.items()]
  log = f'{workdir}.log'
  if distributed is not None:
    port, process = distributed
    env.update(
        JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
        JAX_NUM_PROCESSES='2',
        JAX_PROCESS_ID=str(process),
    )
    args += ['--distributed', f'--heartbeat_timeout_s={HEARTBEAT_S}']
    log = f'{workdir}.{process}.log'
  with open(log, 'w', encoding='utf-8') as f:
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=f, stderr=f), log


def two_processes(workdir, fields):
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  return [train_py(workdir, fields, 2, (port, p)) for p in (0, 1)]


def params_at(workdir, step):
  """Flat {path: numpy array} of the parameters in checkpoint `step`."""
  with ocp.CheckpointManager(
      os.path.join(workdir, 'checkpoints'),
      item_handlers={
          'state': ocp.StandardCheckpointHandler(),
          'data': ocp.JsonCheckpointHandler(),
      },
  ) as manager:
    # Targets on this process's device, whatever topology wrote it.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        manager.item_metadata(step)['state'],
    )
    tree = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )['state']['params']
  return flatten(tree)


def flatten(tree, prefix=()):
  """Nested dicts -> {path tuple: numpy array}."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flatten(v, prefix + (str(k),)))
    return out
  return {prefix: np.asarray(tree)}


def max_difference(a, b):
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def examples(workdir, process):
  with open(
      os.path.join(workdir, 'examples', f'process_{process}.jsonl'),
      encoding='utf-8',
  ) as f:
    return [json.loads(line) for line in f]


def tail(log, size=3000):
  with open(log, encoding='utf-8', errors='replace') as f:
    return f.read()[-size:]


def wait_for(launched, timeout=600):
  """Waits for processes; asserts they succeeded. On a timeout every
  process is killed and the failure shows each one's log."""
  deadline = time.time() + timeout
  for process, log in launched:
    try:
      rc = process.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for other, _ in launched:
        other.kill()
      pytest.fail(
          f'still running after {timeout} s:\n'
          + '\n'.join(f'--- {path}\n{tail(path, 1500)}' for _, path in launched)
      )
    assert rc == 0, tail(log)


@pytest.mark.slow
def test_two_processes_train_like_one(records, tmp_path):
  multi, four, one = (str(tmp_path / n) for n in ('multi', 'four', 'one'))
  first = two_processes(multi, overrides(records, 2))
  references = [
      train_py(four, overrides(records, 2), 4),
      train_py(one, overrides(records, 3), 1),
  ]
  wait_for(first)
  # A copy of the finished 2-step run for the one-process restore below;
  # then the restart: resume at step 2, run on until one process is killed.
  shutil.copytree(multi, multi + '_copy')
  restart = two_processes(multi, overrides(records, 1000))
  wait_for(references)

  # Same parameters after 2 steps.
  reference = params_at(one, 2)
  assert max_difference(params_at(multi + '_copy', 2), reference) < 1e-5
  assert max_difference(params_at(four, 2), reference) < 1e-5
  assert max_difference(params_at(one, 1), reference) > 1e-3  # It trains.

  # Each process read its own contiguous half of every global batch.
  whole = examples(one, 0)
  half = GLOBAL_BATCH // 2
  for process in (0, 1):
    lines = examples(multi + '_copy', process)
    assert [line['step'] for line in lines] == [1, 2]
    for line, full in zip(lines, whole):
      assert line['index'] == full['index'][process * half :][:half]

  # The two-process checkpoint restores in this (one-device) process.
  config = ytvos_config.get_config('runlocal')
  config.update_from_flattened_dict(overrides(records, 2))
  restored = trainer.train(config, multi + '_copy')
  assert restored['steps'] == 2 and not restored['history']
  assert (
      max_difference(
          params_at(multi + '_copy', 2),
          flatten(
              sharding.host_value(nnx.to_pure_dict(restored['state'].params))
          ),
      )
      == 0
  )

  # The restart resumed at step 2; killing one process ends the other
  # within the heartbeat timeout.
  deadline = time.time() + 400
  while not os.path.isdir(os.path.join(multi, 'checkpoints', '3')):
    assert time.time() < deadline and restart[0][0].poll() is None
    time.sleep(0.2)
  killed_at = time.time()
  restart[1][0].send_signal(signal.SIGKILL)
  rc = restart[0][0].wait(timeout=HEARTBEAT_S + 60)
  took = time.time() - killed_at
  with open(restart[0][1], encoding='utf-8') as f:
    text = f.read()
  assert rc != 0 and took < HEARTBEAT_S + 30, (rc, took)
  assert 'resumed from' in text and 'at step 2' in text
  assert 'another task died' in text, text[-2000:]
  for process in (0, 1):
    lines = examples(multi, process)
    assert [line['step'] for line in lines][:3] == [1, 2, 3]
    assert lines[2]['index'] == whole[2]['index'][process * half :][:half]
  # Step 3 starts from parameters equal to 6e-8 and ends 1.6e-4 apart
  # (measured; an update of 0.13), so it is compared with its own size.
  update = max_difference(params_at(one, 3), reference)
  assert max_difference(params_at(multi, 3), params_at(one, 3)) < 0.01 * update

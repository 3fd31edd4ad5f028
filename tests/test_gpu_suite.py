"""Tests for `bench/gpu_suite.sh` / `bench/gpu_suite.py` (`--smoke` mode).

The smoke run is the device run's code on CPU with a tiny model: one child,
checked for a complete row, one compilation per step function and the
official rows skipped with a message. The table's ratios are checked
against a hand-made official row.
"""

import json
import os
import subprocess
import sys

from tests import parity_fixtures as pf

sys.path.insert(0, os.path.join(pf.REPO, 'bench'))
import gpu_suite  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_smoke_run_writes_a_full_row_and_skips_the_official_code(tmp_path):
  out = str(tmp_path / 'suite')
  result = subprocess.run(
      [
          'bash',
          'bench/gpu_suite.sh',
          '--smoke',
          '--models',
          'cfbi',
          '--settings',
          'default',
          '--objects',
          '2',
          '--frames',
          '4',
      ],
      cwd=pf.REPO,
      env=dict(os.environ, OUT=out),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'official code skipped' in result.stderr
  with open(os.path.join(out, 'ours.jsonl')) as f:
    (row,) = [json.loads(line) for line in f]
  assert row['model'] == 'tiny_cfbi' and row['objects'] == 2
  assert row['step_s'] > 0 and row['loop_s'] > 0 and row['compile_s'] > 0
  assert row['compiled_mb']['temp'] > 0 and row['peak_mb'] > 0
  # The loop compiled its first-frame and next-frame steps once each.
  assert row['compilations'] == 2
  with open(os.path.join(out, 'table.md')) as f:
    table = f.read()
  assert '| cfbi | 2 | default | - |' in table


def test_table_ratios_against_the_official_row():
  row = {
      'arch': 'cfbi',
      'objects': 2,
      'setting': 'fast_bf16',
      'step_s': 0.02,
      'loop_s': 0.023,
      'peak_mb': 1500.0,
      'peak_kind': 'device',
      'compile_s': 30.0,
      'compiled_mb': {'temp': 700.0, 'argument': 260.0},
  }
  official = {('cfbi', 'fast', 2): {'sec_median': 0.05, 'max_mem_mb': 1200.0}}
  line = gpu_suite.table([row], official).splitlines()[-1]
  cells = [c.strip() for c in line.strip('|').split('|')]
  assert cells[:6] == ['cfbi', '2', 'fast_bf16', '0.0500', '0.0200', '0.40x']
  assert cells[6:9] == ['0.0230', '1.15x', '1200']
  assert cells[10] == '1.25x'

"""Runs the Colab notebooks end to end in their small mode with nbclient.

`CFBI_NOTEBOOK_SMALL=1` makes `notebooks/demo.ipynb` segment 8 frames of a
held-out synthetic video with the bundled model and `notebooks/train.ipynb`
train 12 steps on 4 synthetic videos, then score a held-out one. Beyond
"every cell runs", the demo's per-object IoU must beat copying the first
frame's mask (computed here from the same synthetic video) by a wide
margin, and the training notebook must log a finite loss and print a J&F.
"""

import ast
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from cfbi_jax import cli
from cfbi_jax import metrics
from cfbi_jax import synthetic

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(name, monkeypatch):
  monkeypatch.setenv('CFBI_NOTEBOOK_SMALL', '1')
  monkeypatch.delenv('MPLBACKEND', raising=False)  # Inline figures.
  notebook = nbformat.read(os.path.join(ROOT, 'notebooks', name), as_version=4)
  client = nbclient.NotebookClient(
      notebook,
      timeout=900,
      kernel_name='python3',
      resources={'metadata': {'path': os.path.join(ROOT, 'notebooks')}},
  )
  client.execute()
  return notebook


def _text(notebook):
  out = []
  for cell in notebook.cells:
    for output in cell.get('outputs', []):
      if output.get('output_type') == 'stream':
        out.append(output['text'])
      elif 'text/plain' in output.get('data', {}):
        out.append(output['data']['text/plain'])
  return '\n'.join(out)


@pytest.mark.slow
def test_demo_notebook(monkeypatch):
  notebook = _run('demo.ipynb', monkeypatch)
  text = _text(notebook)
  assert '8 frames of (120, 160)' in text
  # The last printed dict: object id -> mean IoU over frames 1..7.
  ious = ast.literal_eval(re.findall(r'\{[0-9: .,]+\}', text)[-1])
  _, labels = synthetic.render_video(2 * 100_003)  # The notebook's video.
  copy = {
      k: np.mean(
          [
              metrics.region_similarity(labels[0] == k, l == k)
              for l in labels[1:8]
          ]
      )
      for k in np.unique(labels[0])
      if k
  }
  assert sorted(ious) == sorted(copy)
  for k, iou in ious.items():
    assert iou > copy[k] + 0.25, (ious, copy)
  images = sum(
      'image/png' in o.get('data', {})
      for c in notebook.cells
      for o in c.get('outputs', [])
  )
  assert images == 2  # The overlays and the IoU plot.


@pytest.mark.slow
def test_train_notebook(monkeypatch):
  notebook = _run('train.ipynb', monkeypatch)
  text = _text(notebook)
  assert 'steps run: 12' in text
  loss = float(re.search(r'last logged: loss ([-0-9.naif]+)', text).group(1))
  assert 0.0 < loss < 10.0
  match = re.search(r'on synthetic \(test scale [0-9.]+\): J&F ([0-9.]+)', text)
  assert match, text[-2000:]
  assert 0.0 <= float(match.group(1)) <= 100.0


def _notebook_commands():
  """`python ...` command lines the notebooks show (markdown `code` and
  `!` lines), as `(notebook, [args])`."""
  found = []
  for name in ('demo.ipynb', 'train.ipynb'):
    with open(os.path.join(ROOT, 'notebooks', name), encoding='utf-8') as f:
      cells = json.load(f)['cells']
    for cell in cells:
      text = ''.join(cell['source'])
      for match in re.finditer(r'(?:^!|`)(python [^`\n]*)', text, re.M):
        found.append((name, shlex.split(match.group(1))[1:]))
  return found


@pytest.mark.parametrize('notebook,args', _notebook_commands())
def test_notebook_commands_use_real_flags(notebook, args):
  """Every flag a notebook's command line shows exists: `--name` in the
  command's `--help`, `--config.<field>` in its config."""
  if args[0] == '-m':
    command, rest = args[:2], args[2:]
  else:
    command, rest = [os.path.join(ROOT, args[0])], args[1:]
  flags = [a.split('=')[0] for a in rest if a.startswith('--')]
  helped = subprocess.run(
      [
          sys.executable,
          *command,
          '--helpfull' if command[0] != '-m' else '--help',
      ],
      capture_output=True,
      text=True,
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=ROOT),
      timeout=300,
      check=False,
  )
  assert helped.returncode == 0, helped.stderr[-2000:]
  config_file = command[-1].endswith(('evaluate.py', 'train.py'))
  for flag in flags:
    if flag.startswith('--config.') and config_file:
      default = (
          'configs/eval.py'
          if 'evaluate' in command[-1]
          else ('configs/ytvos.py')
      )
      config = cli.load_config_file(os.path.join(ROOT, default))
      field = flag[len('--config.') :]
      node = config
      for part in field.split('.'):
        assert part in node, (notebook, flag)
        node = node[part]
    else:
      assert flag in helped.stdout + helped.stderr, (notebook, flag)

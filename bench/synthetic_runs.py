"""One training run on the synthetic benchmark, scored on held-out videos:
what `bench/ablate.py` and `bench/compare_models.py` repeat per setting and
seed.

`train_and_score(run)` trains with `train.py --config=configs/synthetic.py:
<arg>` and scores the model directory it writes with `evaluate.py` (the two
entry points, run as subprocesses, so what is measured is exactly what
users run). A run whose `summary.json` exists is returned as is, so an
interrupted sweep resumes. `backbone_init` writes the starting point the
papers use: the run's model from its seed, with the DeepLab feature
extractor of a trained model.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from cfbi_jax import atomic_files  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import synthetic as synthetic_config  # pylint: disable=g-import-not-at-top,wrong-import-position


def run_command(cmd: Sequence[str], log_path: str) -> None:
  """Runs `cmd` in the repository root, its output to `log_path`."""
  with open(log_path, 'w') as log:
    proc = subprocess.run(
        list(cmd), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False
    )
  if proc.returncode:
    raise RuntimeError(
        f'{" ".join(cmd)} failed ({proc.returncode}); see ' f'{log_path}'
    )


def backbone_init(
    config_arg: str, seed: int, backbone_from: str, directory: str
) -> None:
  """Writes a model directory for `init.backbone_checkpoint`: the model of
  `configs/synthetic.py:<config_arg>` initialised from `seed`, with the
  DeepLab feature extractor (backbone, ASPP, decoder) of `backbone_from`."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from cfbi_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top

  config = synthetic_config.get_config(config_arg)
  arrays = checkpoint.flat_state(
      models.build(config.model, rngs=nnx.Rngs(seed))
  )
  source, _ = checkpoint.load_model(backbone_from)
  source = checkpoint.flat_state(source)
  copied = 0
  for path in arrays:
    if path[0] == 'feature_extracter':
      if path not in source or source[path].shape != arrays[path].shape:
        raise ValueError(
            f'{backbone_from} has no DeepLab weight {path} of '
            f'shape {arrays[path].shape}'
        )
      arrays[path] = source[path]
      copied += 1
  if not copied:
    raise ValueError(f'no feature_extracter weights in {backbone_from}')
  checkpoint.save_model(directory, config.model, arrays)


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run and its scoring.

  Attributes:
    run_dir: the run's folder (init/, train/, eval-scale<s>/ and logs).
    config_arg: what follows `configs/synthetic.py:`.
    seed: `config.seed` (initialisation and data order).
    backbone_from: model directory whose DeepLab starts the run ('' = all
      from the seed).
    train_data, test_data: synthetic data folders.
    crop, num_frames, batch_size: training clip settings (`num_frames` 0:
      the config's).
    test_seed, test_videos, test_scale: the held-out set and its scale.
  """

  run_dir: str
  config_arg: str
  seed: int
  backbone_from: str
  train_data: str
  test_data: str
  crop: int
  num_frames: int
  batch_size: int
  test_seed: int
  test_videos: int
  test_scale: float


def train_and_score(
    run: Run, extra_train_flags: Optional[Sequence[str]] = ()
) -> dict:
  """Trains and scores `run`; returns its `summary.json` (plus
  `train_seconds`)."""
  # One evaluation folder per test scale: a finished run is rescored, not
  # reused, when the scale changes.
  eval_dir = os.path.join(run.run_dir, f'eval-scale{run.test_scale:g}')
  summary_path = os.path.join(eval_dir, 'summary.json')
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      return json.load(f)
  os.makedirs(run.run_dir, exist_ok=True)
  init_dir = os.path.join(run.run_dir, 'init')
  if run.backbone_from and not os.path.isdir(init_dir):
    backbone_init(run.config_arg, run.seed, run.backbone_from, init_dir)
  start = time.perf_counter()
  run_command(
      [
          sys.executable,
          'train.py',
          f'--config=configs/synthetic.py:{run.config_arg}',
          f'--workdir={os.path.join(run.run_dir, "train")}',
          f'--config.seed={run.seed}',
          f'--config.data.root={run.train_data}',
          f'--config.data.crop_size={run.crop}',
          f'--config.train.batch_size={run.batch_size}',
          '--config.train.image_every=100000',
      ]
      + (
          [f'--config.train.num_frames={run.num_frames}']
          if run.num_frames
          else []
      )
      + [
          f'--config.init.backbone_checkpoint='
          f'{init_dir if run.backbone_from else ""}',
      ]
      + list(extra_train_flags),
      os.path.join(run.run_dir, 'train.log'),
  )
  trained = time.perf_counter() - start
  run_command(
      [
          sys.executable,
          'evaluate.py',
          '--config=configs/eval.py',
          '--config.checkpoint='
          f'{os.path.join(run.run_dir, "train", "model")}',
          f'--config.data.root={run.test_data}',
          f'--config.data.synthetic_seed={run.test_seed}',
          f'--config.data.synthetic_videos={run.test_videos}',
          f'--config.output_dir={eval_dir}',
          f'--config.tta.scales=({run.test_scale},)',
          '--config.overlays=False',
      ],
      eval_dir + '.log',
  )  # Beside it: evaluate.py wants it empty.
  with open(summary_path) as f:
    summary = json.load(f)
  summary['train_seconds'] = trained
  atomic_files.write_json(summary_path, summary, indent=2)
  return summary


def write_report(path: str, text: str) -> None:
  """Writes a sweep's Markdown report to `path` atomically and prints it."""
  with atomic_files.atomic_path(path) as tmp:
    with open(tmp, 'w') as f:
      f.write(text)
  print(text)


def steady_fps(summary: dict) -> float:
  """Frames per second of a scored run without its first sequence (which
  includes compilation)."""
  rows = summary['sequences'][1:] or summary['sequences']
  return sum(r['frames'] for r in rows) / sum(r['seconds'] for r in rows)

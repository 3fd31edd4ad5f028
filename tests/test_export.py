"""Tests for `cfbi_jax.inference.export`: the artifact runs with `jax`
alone.

`python -m cfbi_jax.inference.export` writes the bundled model's per-frame
step; a subprocess in which `import flax` and `import cfbi_jax` fail
deserializes it, segments a clip and saves the labels, which must equal a
`Session`'s on the same model directory and frames.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from cfbi_jax import Session
from cfbi_jax import synthetic
from configs import eval as eval_config
from tests import parity_fixtures as pf

_STANDALONE = textwrap.dedent("""
    import sys
    sys.modules['flax'] = None      # import flax -> ImportError
    sys.modules['cfbi_jax'] = None  # import cfbi_jax -> ImportError
    import jax
    import numpy as np
    out, clip = sys.argv[1], np.load(sys.argv[2])
    load = lambda name: jax.export.deserialize(
        open(f'{out}/{name}', 'rb').read())
    init, step = load('init.bin'), load('step.bin')
    frames = clip['frames']
    state = init.call(frames[0], clip['mask'])
    labels = [np.asarray(clip['mask'])]
    for frame in frames[1:]:
      state, frame_labels = step.call(state, frame)
      labels.append(np.asarray(frame_labels))
    np.save(sys.argv[3], np.stack(labels))
""")


def export_and_run(ckpt, frames, mask, scale, tmp_path, platforms=()):
  """Exports `ckpt` for the clip's size (for `platforms`, or the tool's
  default), runs the artifact where flax and cfbi_jax cannot be imported;
  returns the signature, its labels per frame and those of a `Session` on
  the same model and frames."""
  height, width = mask.shape
  out = str(tmp_path / 'export')
  env = dict(os.environ, PYTHONPATH=pf.REPO)
  made = subprocess.run(
      [
          sys.executable,
          '-m',
          'cfbi_jax.inference.export',
          '--checkpoint',
          ckpt,
          '--height',
          str(height),
          '--width',
          str(width),
          '--objects',
          str(int(mask.max())),
          '--scale',
          str(scale),
          '--out',
          out,
      ]
      + (['--platforms', *platforms] if platforms else []),
      env=env,
      cwd=pf.REPO,
      capture_output=True,
      text=True,
  )
  assert made.returncode == 0, made.stderr[-3000:]
  with open(os.path.join(out, 'signature.json')) as f:
    signature = json.load(f)
  np.savez(tmp_path / 'clip.npz', frames=np.stack(frames), mask=mask)
  script = tmp_path / 'standalone.py'
  script.write_text(_STANDALONE)
  ran = subprocess.run(
      [
          sys.executable,
          str(script),
          out,
          str(tmp_path / 'clip.npz'),
          str(tmp_path / 'labels.npy'),
      ],
      cwd=str(tmp_path),
      capture_output=True,
      text=True,
      env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'},
  )
  assert ran.returncode == 0, ran.stderr[-3000:]
  stream = Session(ckpt, scales=(scale,))
  expected = [
      stream.push(f, mask if t == 0 else None) for t, f in enumerate(frames)
  ]
  return signature, np.load(tmp_path / 'labels.npy'), np.stack(expected)


def test_exported_step_runs_without_flax_and_equals_the_session(tmp_path):
  ckpt = eval_config.BUNDLED_MODEL
  # A held-out video of the synthetic benchmark (seed 2, never trained on),
  # 6 frames, exported at 1.5x as the bundled model is evaluated.
  frames, labels = synthetic.render_video(synthetic.video_seed(2, 0))
  frames, labels = frames[:6], labels[:6]
  num_objects = int(labels[0].max())
  signature, exported, expected = export_and_run(
      ckpt, frames, labels[0], 1.5, tmp_path
  )
  assert (signature['height'], signature['width'], signature['objects']) == (
      120,
      160,
      num_objects,
  )
  assert 'cpu' in signature['platforms']
  assert signature['input_size'] == [177, 241]  # The official 16k+1 sizing.
  np.testing.assert_array_equal(exported, expected)
  # Not a degenerate answer: every object is still found.
  assert len(np.unique(exported[-1])) == num_objects + 1


def test_a_model_memory_travels_in_the_exported_state(tmp_path):
  """VideoMatch's online-update buffer (a dict of arrays) is part of the
  exported state, and the artifact's labels equal the session's."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from cfbi_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from cfbi_jax import models  # pylint: disable=g-import-not-at-top

  config = models.model_config('tiny_videomatch')
  config.outlier_distance = 4.0  # Outliers exist, so the buffer fills.
  module = models.build(config, rngs=nnx.Rngs(2))
  ckpt = str(tmp_path / 'model')
  checkpoint.save_model(ckpt, config, checkpoint.flat_state(module))
  frames, labels = synthetic.render_video(synthetic.video_seed(2, 1))
  signature, exported, expected = export_and_run(
      ckpt, frames[:4], labels[0], 1.0, tmp_path, platforms=('cpu',)
  )
  names = [entry['name'] for entry in signature['state']]
  assert any('memory' in n and 'count' in n for n in names), names
  np.testing.assert_array_equal(exported, expected)

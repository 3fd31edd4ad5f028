"""Tests for `cfbi_jax.export`: the artifact runs with `jax` alone.

`python -m cfbi_jax.export` writes the bundled model's per-frame step; a
subprocess in which `import flax` and `import cfbi_jax` fail deserializes
it, segments a clip and saves the labels, which must equal a `Session`'s on
the same model directory and frames.
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

_STANDALONE = textwrap.dedent('''
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
''')


def test_exported_step_runs_without_flax_and_equals_the_session(tmp_path):
  ckpt = eval_config.BUNDLED_MODEL
  # A held-out video of the synthetic benchmark (seed 2, never trained on),
  # 6 frames, exported at 1.5x as the bundled model is evaluated.
  frames, labels = synthetic.render_video(synthetic.video_seed(2, 0))
  frames, labels = frames[:6], labels[:6]
  num_objects = int(labels[0].max())
  out = str(tmp_path / 'export')
  env = dict(os.environ, PYTHONPATH=pf.REPO)
  made = subprocess.run(
      [sys.executable, '-m', 'cfbi_jax.export', '--checkpoint', ckpt,
       '--height', '120', '--width', '160', '--objects', str(num_objects),
       '--scale', '1.5', '--out', out],
      env=env, cwd=pf.REPO, capture_output=True, text=True)
  assert made.returncode == 0, made.stderr[-3000:]
  with open(os.path.join(out, 'signature.json')) as f:
    signature = json.load(f)
  assert (signature['height'], signature['width'],
          signature['objects']) == (120, 160, num_objects)
  assert 'cpu' in signature['platforms']
  assert signature['input_size'] == [177, 241]  # The official 16k+1 sizing.
  np.savez(tmp_path / 'clip.npz', frames=np.stack(frames), mask=labels[0])
  script = tmp_path / 'standalone.py'
  script.write_text(_STANDALONE)
  ran = subprocess.run(
      [sys.executable, str(script), out, str(tmp_path / 'clip.npz'),
       str(tmp_path / 'labels.npy')],
      cwd=str(tmp_path), capture_output=True, text=True,
      env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
  assert ran.returncode == 0, ran.stderr[-3000:]
  exported = np.load(tmp_path / 'labels.npy')
  stream = Session(ckpt, scales=(1.5,))
  expected = [stream.push(f, labels[0] if t == 0 else None)
              for t, f in enumerate(frames)]
  np.testing.assert_array_equal(exported, np.stack(expected))
  # Not a degenerate answer: every object is still found.
  assert len(np.unique(exported[-1])) == num_objects + 1

"""Conformance of every model family to the one contract (`models/family.py`).

For each registered family's tiny variants (`models.FAMILIES`), plus a
fifth family that this file defines below in about 30 lines and registers
at run time (`Toy`: nearest-neighbour matching to the references of a
linear colour embedding), the same checks:

1. it trains one step through `train.py`'s code path
   (`trainer.train_and_write` on `configs/ytvos.py:model=<m>,runlocal`),
   which writes the model directory `workdir/model`;
2. that directory round-trips: `checkpoint.load_model` gives back the
   trained weights, bit for bit, and the family and variant;
3. it streams: `Session(directory)` gives the labels of the evaluation
   loop (`videos.VideoPropagator`) on a clip with a late object, and the
   model's own memory keeps its shapes and stays finite;
4. it exports: the `jax.export` artifact's labels equal the session's.

The toy family touches nothing but this file and `models.register`, which
is the claim that a family is one file and one line. It also checks that
the input channel order belongs to the model: trained with `bgr=False`,
its directory says so, and evaluation (`evaluate.py`'s `evaluation.run`)
feeds RGB.
"""

import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from cfbi_jax import checkpoint
from cfbi_jax import models
from cfbi_jax import output_files
from cfbi_jax import resize
from cfbi_jax import trainer
from cfbi_jax import vos
from cfbi_jax.inference import export
from cfbi_jax.inference import session as session_lib
from cfbi_jax.inference import videos
from configs import ytvos as ytvos_config
from tests import synthetic_clips
from tests import synthetic_layouts


class Toy(nnx.Module):
  """A linear colour embedding at stride 4, matched to the references."""

  def __init__(self, dim: int = 4, temperature: float = 1.0, *, rngs: nnx.Rngs):
    self.proj = nnx.Linear(3, dim, rngs=rngs)
    self.temperature = temperature

  def embed(self, images, dropout_rng=None):
    x = self.proj(images[:, ::4, ::4])
    return vos.FrameEmbedding(features_s4=x, scales=(x,)), {}

  def segment(self, state, current, obj_valid, training=False):
    q = current.scales[0]  # [B, h, w, C]
    b, c = q.shape[0], q.shape[-1]
    ref = state.ref_scales[0].reshape(b, 1, 1, -1, c)  # [B, 1, 1, N, C]
    lab = resize.resize_labels_nearest(state.ref_labels, q.shape[1:3])
    lab = jnp.where(state.ref_valid[:, :, None, None], lab, -1).reshape(b, -1)
    d = jnp.sum((q[:, :, :, None] - ref) ** 2, -1)  # [B, h, w, N]
    member = lab[:, None, None, :, None] == jnp.arange(obj_valid.shape[1])
    nearest = jnp.min(jnp.where(member, d[..., None], 1e4), axis=3)
    logits = jnp.where(
        obj_valid[:, None, None], -nearest / self.temperature, vos.INVALID_LOGIT
    )
    return vos.Segmentation(logits=logits)

  def start_memory(self, emb, labels, memory_slots):
    return ()

  def advance_memory(self, state, emb, labels, update, training=False):
    return ()


TOY = models.Family(
    name='toy',
    module=Toy,
    variants={'tiny_toy': {}},
    eval_fields=('temperature',),
)


@pytest.fixture(scope='module', autouse=True)
def toy_family():
  models.register(TOY)
  yield
  models.unregister(TOY.name)


TINY = [v for v in models.variants() if v.startswith('tiny_')] + ['tiny_toy']


@pytest.fixture(scope='module')
def ytb_root(tmp_path_factory):
  return synthetic_layouts.write_youtube_vos(
      str(tmp_path_factory.mktemp('ytb')), num_videos=2, num_frames=6
  )


def train_one_step(ytb_root, workdir, model, **model_fields):
  """One step of `train.py`'s path; returns (result, model directory)."""
  config = ytvos_config.get_config(f'model={model},runlocal')
  config.data.root = ytb_root
  config.train.steps = config.optim.total_steps = 1
  config.train.log_every = 1
  config.model.update(model_fields)
  result = trainer.train_and_write(config, workdir)
  return result, os.path.join(workdir, 'model')


def test_every_family_is_registered_once():
  assert set(models.FAMILIES) >= {'cfbi', 'feelvos', 'videomatch', 'toy'}
  assert len(models.variants()) == len(set(models.variants()))
  assert 'toy' in models.training_models()


@pytest.mark.parametrize('variant', TINY)
def test_family_trains_round_trips_streams_and_exports(
    variant, ytb_root, tmp_path
):
  model = variant[len('tiny_') :]
  result, directory = train_one_step(ytb_root, str(tmp_path / 'run'), model)
  assert result['steps'] == 1 and np.isfinite(result['metrics']['loss'])

  # The model directory holds the trained weights and its config.
  module, config = checkpoint.load_model(directory)
  assert (config.name, config.variant) == (
      models.family_of(config).name,
      variant,
  )
  assert config.bgr is True
  trained = nnx.merge(
      result['graphdef'], result['state'].params, result['state'].frozen
  )
  want = checkpoint.flat_state(trained)
  got = checkpoint.flat_state(module)
  assert set(got) == set(want)
  for path in want:
    np.testing.assert_array_equal(
        np.asarray(got[path]), np.asarray(want[path]), err_msg=str(path)
    )

  # The session gives the evaluation loop's labels (a late object).
  frames, labels = synthetic_clips.two_squares(num_frames=4, late_object=True)
  only = lambda t, k: np.where(labels[t] == k, k, 0).astype(np.uint8)
  annotations = {0: only(0, 1), 2: only(2, 2)}
  loop = [
      l
      for _, l, _ in videos.VideoPropagator(module).run(
          frames, annotations, len(frames)
      )
  ]
  stream = session_lib.Session(directory)
  streamed, memory_shapes = [], []
  for t, frame in enumerate(frames):
    streamed.append(stream.push(frame, annotations.get(t)))
    memory = stream._states[0].memory  # pylint: disable=protected-access
    memory_shapes.append([x.shape for x in jax.tree.leaves(memory)])
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(memory))
  for t, (a, b) in enumerate(zip(streamed, loop)):
    np.testing.assert_array_equal(a, b, err_msg=f'frame {t}')
  # The model's own memory keeps its shapes when objects arrive.
  assert all(s == memory_shapes[0] for s in memory_shapes)

  # The exported step gives the session's labels (objects known at frame 0).
  height, width = frames[0].shape[:2]
  export.export_step(
      module,
      str(tmp_path / 'export'),
      height=height,
      width=width,
      num_objects=1,
      platforms=('cpu',),
  )
  load = lambda name: jax.export.deserialize(
      (tmp_path / 'export' / name).read_bytes()
  )
  init, step = load('init.bin'), load('step.bin')
  state = init.call(frames[0], annotations[0])
  # A new stream on the same compiled steps (no second compilation).
  stream = session_lib.Session(
      None, steps=stream.steps, params=stream.params, bgr=stream.bgr
  )
  stream.push(frames[0], annotations[0])
  for t in range(1, len(frames)):
    state, exported = step.call(state, frames[t])
    np.testing.assert_array_equal(
        np.asarray(exported), stream.push(frames[t]), err_msg=f'frame {t}'
    )


def test_input_order_is_the_models(ytb_root, tmp_path):
  """Trained with `bgr=False`, the directory says so and evaluation feeds
  RGB: its probabilities are the RGB session's, not the BGR one's."""
  from cfbi_jax import evaluation  # pylint: disable=g-import-not-at-top
  from configs import video as video_config  # pylint: disable=g-import-not-at-top

  _, directory = train_one_step(
      ytb_root, str(tmp_path / 'run'), 'toy', bgr=False
  )
  with open(os.path.join(directory, checkpoint.CONFIG_FILE)) as f:
    assert json.load(f)['bgr'] is False
  frames, labels = synthetic_clips.two_squares(num_frames=3)
  clip = tmp_path / 'clip'
  clip.mkdir()
  for t, frame in enumerate(frames):  # PNG: the frames read back exactly.
    Image.fromarray(frame).save(clip / f'{t:05d}.png')
  mask = str(tmp_path / 'mask.png')
  output_files.write_palette_png(mask, labels[0])
  config = video_config.get_config()
  config.video, config.masks = str(clip), mask
  config.checkpoint, config.output_dir = directory, str(tmp_path / 'out')
  config.save_probs, config.overlays = True, False
  config.compilation_cache_dir = ''
  evaluation.run(config)
  found = glob.glob(str(tmp_path / 'out' / '*' / '00001.npz'))
  assert len(found) == 1, found
  probs = np.moveaxis(np.load(found[0])['probs'], 0, -1)
  session_probs = {}
  for bgr in (False, True):
    stream = session_lib.Session(directory, bgr=bgr, with_probs=True)
    stream.push(frames[0], labels[0])
    session_probs[bgr] = stream.push_async(frames[1]).probs()
  np.testing.assert_allclose(probs, session_probs[False], atol=1e-6)
  assert np.abs(session_probs[True] - session_probs[False]).max() > 1e-3


def test_evaluation_takes_the_fields_of_the_loaded_family(tmp_path):
  """`--config.model.<field>` exists for every family's evaluation fields;
  one the loaded model's family lacks is refused in one line (exit 2)."""
  from configs import eval as eval_config  # pylint: disable=g-import-not-at-top

  model = eval_config.get_config().model
  for record in models.FAMILIES.values():
    assert set(record.all_eval_fields()) <= set(model)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [
          sys.executable,
          os.path.join(repo, 'evaluate.py'),
          '--config.model.top_k=5',
          f'--config.output_dir={tmp_path / "out"}',
      ],
      cwd=str(tmp_path),
      capture_output=True,
      text=True,
      env=dict(os.environ, PYTHONPATH=repo),
  )
  assert out.returncode == 2, out.stderr[-2000:]
  error = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert len(error) == 1 and 'Traceback' not in out.stderr, out.stderr
  assert "'top_k'" in error[0] and 'a cfbi model' in error[0]


def test_old_channel_order_flags_still_work(capsys):
  """`config.model_bgr` (training) and `config.bgr` (evaluation) still set
  the order, with a deprecation line; a directory without `bgr` is BGR."""
  from cfbi_jax import evaluation  # pylint: disable=g-import-not-at-top
  from configs import eval as eval_config  # pylint: disable=g-import-not-at-top

  config = ytvos_config.get_config('runlocal')
  assert config.model.bgr is True and config.model_bgr is None
  config.model_bgr = False
  trainer.apply_deprecated_fields(config)
  assert config.model.bgr is False and config.model_bgr is None
  assert 'model_bgr is deprecated' in capsys.readouterr().err
  config = eval_config.get_config('dataset=davis2017')
  stored = models.model_config('tiny_cfbi')
  assert evaluation.model_overrides(config, stored) == {}
  config.bgr = False
  assert evaluation.model_overrides(config, stored) == {'bgr': False}
  assert '--config.bgr is deprecated' in capsys.readouterr().err
  del stored['bgr']
  assert models.family_lib.bgr(stored) is True

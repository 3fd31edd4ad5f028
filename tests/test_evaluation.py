"""End-to-end tests of `evaluate.py` / `cfbi_jax.evaluation`.

* The real command line on the parity clip's PNG frames, with weights
  converted from the fixture manifest by the real converter: the first
  propagated frame's saved probabilities match the official ones (every
  variant in `CFBI_PARITY_DIR`; skipped only when the folder is absent),
  and the compiled steps land in the persistent compilation cache.
* The default run (`python evaluate.py`, no arguments): the bundled model
  on held-out synthetic videos beats the copy-first-frame baseline by a
  wide margin and writes overlays.
* With a tiny model on synthetic data made here: a DAVIS run with scoring,
  a YouTube-VOS run with a late object and the submission zip's layout,
  resume-skip, a video-file input, and bad inputs with their messages.
"""

import copy
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from cfbi_jax import checkpoint
from cfbi_jax import datasets
from cfbi_jax import evaluation
from cfbi_jax import models
from cfbi_jax import output_files
from cfbi_jax import Session
from cfbi_jax.models import family
from configs import eval as eval_config
from configs import video as video_config
from tests import parity_fixtures as pf
from tests import synthetic_clips

REPO = pf.REPO


def _tiny_checkpoint(directory):
  config = models.model_config('tiny_cfbi')
  module = models.build(config, rngs=nnx.Rngs(0))
  checkpoint.save_model(directory, config, checkpoint.flat_state(module))
  return directory


def _save_png(path, array, palette=True):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if palette:
    output_files.write_palette_png(path, array)
  else:
    Image.fromarray(array).save(path)


def _davis_root(root, names=('alpha', 'beta')):
  for i, name in enumerate(names):
    frames, labels = synthetic_clips.two_squares(seed=i)
    for t, (f, l) in enumerate(zip(frames, labels)):
      _save_png(
          os.path.join(root, 'JPEGImages', '480p', name, f'{t:05d}.jpg'),
          f,
          palette=False,
      )
      _save_png(
          os.path.join(root, 'Annotations', '480p', name, f'{t:05d}.png'), l
      )
  os.makedirs(os.path.join(root, 'ImageSets', '2017'), exist_ok=True)
  with open(os.path.join(root, 'ImageSets', '2017', 'val.txt'), 'w') as f:
    f.write('\n'.join(names) + '\n')
  return root


def dict_copy(config, **fields):
  """A deep copy of `config` with dotted `fields` set."""
  out = copy.deepcopy(config)
  out.update_from_flattened_dict(fields)
  return out


def _config(base, dataset=None, **fields):
  return dict_copy(
      base.get_config(f'dataset={dataset}' if dataset else None), **fields
  )


# The command line (convert, then evaluate.py on a frame folder) is the same
# wiring for every variant, and every variant's numerical parity is
# tests/test_parity.py's; one variant, the cheapest, keeps CI time down.
_CLI_VARIANTS = [
    v for v in pf.variants() if v == 'cfbi_mobilenetv2'
] or pf.variants()[:1]


@pytest.mark.slow
@pf.requires_parity
@pytest.mark.parametrize('variant', _CLI_VARIANTS)
def test_command_line_on_parity_clip(variant, tmp_path):
  sd = pf.state_dict(variant)
  src = str(tmp_path / 'official.npz')
  np.savez(src, **sd)
  ckpt = str(tmp_path / 'ckpt')
  env = dict(os.environ, PYTHONPATH=REPO)
  subprocess.run(
      [
          sys.executable,
          '-m',
          'cfbi_jax.convert',
          '--variant',
          variant,
          '--src',
          src,
          '--dst',
          ckpt,
      ],
      check=True,
      env=env,
      cwd=REPO,
      capture_output=True,
  )
  out = str(tmp_path / 'out')
  result = subprocess.run(
      [
          sys.executable,
          'evaluate.py',
          '--config=configs/video.py',
          f'--config.video={pf.path("clip", "frames")}',
          f'--config.masks={pf.path("clip", "annotations", "00000.png")}',
          f'--config.checkpoint={ckpt}',
          f'--config.output_dir={out}',
          '--config.save_probs=True',
          '--config.overlays=False',
          f'--config.compilation_cache_dir={tmp_path / "jax_cache"}',
      ],
      env={k: v for k, v in env.items() if k != 'JAX_COMPILATION_CACHE_DIR'},
      cwd=REPO,
      capture_output=True,
      text=True,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  # The compiled steps went to the persistent compilation cache.
  assert any(
      'next_frame' in name for name in os.listdir(tmp_path / 'jax_cache')
  )
  probs = np.load(os.path.join(out, 'frames', '00001.npz'))['probs']
  official = pf.load_npz(variant, 'frame1.npz')['probs'][0]
  diff = pf.max_abs_diff(probs, official)
  assert diff <= pf.atol(variant, 'probs'), diff
  label = np.asarray(Image.open(os.path.join(out, 'frames', '00001.png')))
  near_tie = pf.load_npz(variant, 'sequence.npz')['near_tie'][0].astype(bool)
  official_label = pf.load_npz(variant, 'frame1.npz')['pred_label']
  assert not np.any((label != official_label) & ~near_tie)


@pytest.fixture(scope='module')
def tiny_ckpt(tmp_path_factory):
  return _tiny_checkpoint(str(tmp_path_factory.mktemp('ckpt')))


def test_davis_run_scores_and_resumes(tiny_ckpt, tmp_path, capsys):
  root = _davis_root(str(tmp_path / 'DAVIS'))
  out = str(tmp_path / 'out')
  config = _config(
      eval_config,
      checkpoint=tiny_ckpt,
      output_dir=out,
      dataset='davis2017',
      **{'data.root': root},
      save_probs=True,
  )
  summary = evaluation.run(config)
  assert [r['sequence'] for r in summary['sequences']] == ['alpha', 'beta']
  assert 0.0 <= summary['davis']['J&F-Mean'] <= 1.0
  assert summary['compilations'] >= 2
  for t in range(4):
    assert os.path.exists(os.path.join(out, 'alpha', f'{t:05d}.png'))
  probs = np.load(os.path.join(out, 'alpha', '00001.npz'))['probs']
  assert probs.shape == (3, 33, 49)
  np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
  # Frame 0's PNG is the given annotation.
  first = np.asarray(Image.open(os.path.join(out, 'alpha', '00000.png')))
  np.testing.assert_array_equal(
      first, synthetic_clips.two_squares(seed=0)[1][0]
  )
  # A re-run skips both finished sequences and rewrites nothing.
  stamp = os.path.getmtime(os.path.join(out, 'beta', '00003.png'))
  capsys.readouterr()
  again = evaluation.run(config)
  assert again['skipped_complete'] == ['alpha', 'beta']
  assert (
      f'outputs: {out}; reusing 2 of 2 sequences, finished there from '
      'the same inputs (alpha, beta)'
  ) in capsys.readouterr().out
  assert os.path.getmtime(os.path.join(out, 'beta', '00003.png')) == stamp
  # ... and keeps the first run's timings in summary.json.
  assert again['sequences'] == summary['sequences']
  # A missing frame makes that sequence incomplete again; its row is new,
  # alpha's is the first run's.
  os.remove(os.path.join(out, 'beta', '00002.png'))
  third = evaluation.run(config)
  assert third['skipped_complete'] == ['alpha']
  assert [r['sequence'] for r in third['sequences']] == ['alpha', 'beta']
  assert third['sequences'][0] == summary['sequences'][0]
  assert third['sequences'][1] != summary['sequences'][1]
  with open(os.path.join(out, 'summary.json'), encoding='utf-8') as f:
    assert json.load(f)['sequences'] == json.loads(
        json.dumps(third['sequences'])
    )


def test_changed_inputs_are_segmented_again(tiny_ckpt, tmp_path, capsys):
  """Outputs are reused only for the inputs they came from: a new
  first-frame mask (one object where there were two) or an edited frame
  makes its sequence run again; the other sequence is still reused."""
  root = _davis_root(str(tmp_path / 'DAVIS'))
  out = str(tmp_path / 'out')
  config = _config(
      eval_config,
      checkpoint=tiny_ckpt,
      output_dir=out,
      dataset='davis2017',
      **{'data.root': root},
  )
  evaluation.run(config)
  labels = lambda t: np.asarray(
      Image.open(os.path.join(out, 'alpha', f'{t:05d}.png'))
  )
  assert labels(0).max() == 2  # frame 0's PNG is its annotation
  mask_path = os.path.join(root, 'Annotations', '480p', 'alpha', '00000.png')
  _save_png(
      mask_path, (np.asarray(Image.open(mask_path)) == 1).astype(np.uint8)
  )
  capsys.readouterr()
  again = evaluation.run(config)
  assert again['skipped_complete'] == ['beta']
  assert (
      'reusing 1 of 2 sequences, finished there from the same inputs '
      '(beta); segmenting 1 again, whose inputs changed since their '
      'outputs were written (alpha)'
  ) in capsys.readouterr().out
  # The new one-object mask's segmentation.
  assert labels(0).max() == 1 and labels(3).max() <= 1
  # A frame replaced by another file of the same name counts too.
  frame_path = os.path.join(root, 'JPEGImages', '480p', 'beta', '00002.jpg')
  os.utime(frame_path, ns=(0, 0))
  third = evaluation.run(config)
  assert third['skipped_complete'] == ['alpha']


def test_youtube_vos_late_object_and_submission(tiny_ckpt, tmp_path):
  root = tmp_path / 'ytvos' / 'valid'
  frames, labels = synthetic_clips.two_squares(num_frames=5, late_object=True)
  names = [f'{5 * t:05d}' for t in range(5)]
  for n, f in zip(names, frames):
    _save_png(str(root / 'JPEGImages' / 'vid' / f'{n}.jpg'), f, palette=False)
  # An extra JPEG that meta.json does not list is not segmented.
  _save_png(
      str(root / 'JPEGImages' / 'vid' / '00001.jpg'), frames[0], palette=False
  )
  _save_png(
      str(root / 'Annotations' / 'vid' / f'{names[0]}.png'),
      (labels[0] == 1).astype(np.uint8),
  )
  _save_png(
      str(root / 'Annotations' / 'vid' / f'{names[2]}.png'),
      np.where(labels[2] == 2, 2, 0).astype(np.uint8),
  )
  meta = {
      'videos': {
          'vid': {
              'objects': {
                  '1': {'category': 'a', 'frames': names},
                  '2': {'category': 'b', 'frames': names[2:]},
              }
          }
      }
  }
  with open(root / 'meta.json', 'w') as f:
    json.dump(meta, f)
  out = str(tmp_path / 'out')
  config = _config(
      eval_config,
      checkpoint=tiny_ckpt,
      output_dir=out,
      dataset='youtubevos2018',
      save_probs=True,
      **{'data.root': str(tmp_path / 'ytvos')},
  )
  summary = evaluation.run(config)
  with zipfile.ZipFile(summary['submission']) as z:
    assert sorted(z.namelist()) == [f'Annotations/vid/{n}.png' for n in names]
  # The late object is pasted on its first frame and predicted afterwards.
  k_before = np.load(os.path.join(out, 'vid', f'{names[2]}.npz'))['probs']
  k_after = np.load(os.path.join(out, 'vid', f'{names[3]}.npz'))['probs']
  assert k_before.shape[0] == 2 and k_after.shape[0] == 3
  pasted = np.asarray(
      Image.open(os.path.join(out, 'Annotations', 'vid', f'{names[2]}.png'))
  )
  assert np.all(pasted[labels[2] == 2] == 2)
  # A streaming Session on the same model directory, frames and masks gives
  # exactly the labels evaluate.py wrote.
  (seq,) = datasets.youtube_vos_sequences(str(tmp_path / 'ytvos'), 'valid')
  stream = Session(tiny_ckpt)
  for t, name, rgb in seq.iter_frames():
    mask = seq.load_annotation(t) if t in seq.annotated else None
    written = np.asarray(
        Image.open(os.path.join(out, 'Annotations', 'vid', f'{name}.png'))
    )
    np.testing.assert_array_equal(stream.push(rgb, mask), written)


def test_video_file_input_with_overlays(tiny_ckpt, tmp_path):
  # Even sizes: yuv420p video would pad odd ones.
  frames, labels = synthetic_clips.two_squares(num_frames=4, size=(34, 50))
  video = str(tmp_path / 'clip.mp4')
  output_files.write_overlay_video(video, frames, fps=10)
  mask = str(tmp_path / 'first.png')
  _save_png(mask, labels[0])
  out = str(tmp_path / 'out')
  config = _config(
      video_config,
      checkpoint=tiny_ckpt,
      output_dir=out,
      video=video,
      masks=mask,
  )
  summary = evaluation.run(config)
  assert summary['sequences'][0]['frames'] == 4
  for t in range(4):
    assert os.path.exists(os.path.join(out, 'clip', f'{t:05d}.png'))
    assert os.path.exists(os.path.join(out, 'clip_overlay', f'{t:05d}.png'))
  # The overlay video keeps the input's 10 frames/s.
  overlay = datasets.own_video_sequence(
      os.path.join(out, 'clip_overlay.mp4'), mask, validate=False
  )
  assert overlay.frame_rate() == pytest.approx(10.0)


@pytest.mark.parametrize(
    'case,message',
    [
        ('rgb_mask', 'palette'),
        ('size_mismatch', 'but its frame is'),
        ('empty_first_mask', 'no object'),
        ('too_many_objects', 'max_objects'),
        ('missing_frame_dir', 'not found|does not exist|no frames|missing'),
    ],
)
def test_bad_inputs_are_clear_errors(tiny_ckpt, tmp_path, case, message):
  frames, labels = synthetic_clips.two_squares(num_frames=3)
  folder = tmp_path / 'frames'
  for t, f in enumerate(frames):
    _save_png(str(folder / f'{t:05d}.jpg'), f, palette=False)
  mask = str(tmp_path / 'mask.png')
  if case == 'rgb_mask':
    Image.fromarray(np.stack([labels[0] * 100] * 3, -1)).save(mask)
  elif case == 'size_mismatch':
    _save_png(mask, labels[0][:-2])
  elif case == 'empty_first_mask':
    _save_png(mask, np.zeros_like(labels[0]))
  elif case == 'too_many_objects':
    _save_png(mask, labels[0] * 7)
  else:
    _save_png(mask, labels[0])
    folder = tmp_path / 'nowhere'
  config = _config(
      video_config,
      checkpoint=tiny_ckpt,
      output_dir=str(tmp_path / 'out'),
      video=str(folder),
      masks=mask,
      max_objects=5,
  )
  with pytest.raises(
      (datasets.DatasetError, ValueError, FileNotFoundError), match=message
  ):
    evaluation.run(config)
  assert not os.path.exists(tmp_path / 'out' / 'frames' / '00001.png')


def test_default_run_is_the_bundled_model_on_held_out_videos(
    tiny_ckpt, tmp_path
):
  config = eval_config.get_config()
  assert config.dataset == 'synthetic' and config.data.synthetic_seed == 2
  assert os.path.isfile(os.path.join(config.checkpoint, checkpoint.CONFIG_FILE))
  # The first of the 20 default videos (same seed, so the same video).
  config.data.synthetic_videos = 1
  config.data.root = str(tmp_path / 'data')
  config.output_dir = str(tmp_path / 'out')
  summary = evaluation.run(config)
  model_jf = summary['davis']['J&F-Mean']
  copy_jf = summary['copy_first_frame']['J&F-Mean']
  assert model_jf > 0.4 and model_jf > copy_jf + 0.25, (model_jf, copy_jf)
  assert len(os.listdir(tmp_path / 'out' / 'synth002-0000_overlay')) == 24
  # Another model may not reuse (and be scored on) these outputs: not
  # another folder, not other weights in the same folder, not other
  # test-time settings.
  with pytest.raises(ValueError, match='checkpoint, digest differ'):
    evaluation.run(dict_copy(config, checkpoint=tiny_ckpt))
  with pytest.raises(ValueError, match='settings differ'):
    evaluation.run(dict_copy(config, **{'tta.flip': True}))
  moved = str(tmp_path / 'model')
  shutil.copytree(config.checkpoint, moved)
  with pytest.raises(ValueError, match='checkpoint differ'):
    evaluation.run(dict_copy(config, checkpoint=moved))
  config_json = os.path.join(moved, checkpoint.CONFIG_FILE)
  with open(config_json, 'a') as f:
    f.write('\n')  # Same folder, other bytes.
  other = dict_copy(config, checkpoint=moved, output_dir=str(tmp_path / 'out2'))
  other.data.synthetic_videos = 1
  os.makedirs(other.output_dir)  # As evaluation.run does before claiming.
  # The input channel order the run claims: the model's own.
  bgr = family.bgr(checkpoint.read_model_config(config.checkpoint))
  evaluation._claim_output_dir(other, bgr)  # pylint: disable=protected-access
  shutil.copy(
      os.path.join(config.checkpoint, checkpoint.CONFIG_FILE), config_json
  )
  with pytest.raises(ValueError, match='digest differ'):
    evaluation._claim_output_dir(other, bgr)  # pylint: disable=protected-access
  # Outputs without a claim (written before claims existed) are refused.
  os.remove(os.path.join(config.output_dir, 'model.json'))
  with pytest.raises(ValueError, match='has no model.json'):
    evaluation.run(config)


def test_config_errors(tiny_ckpt, tmp_path):
  with pytest.raises(ValueError, match='checkpoint'):
    evaluation.run(
        _config(eval_config, output_dir=str(tmp_path), checkpoint='')
    )
  with pytest.raises(ValueError, match='holds'):
    evaluation.run(
        _config(
            eval_config,
            checkpoint=tiny_ckpt,
            output_dir=str(tmp_path),
            variant='cfbi_resnet101',
            **{'data.root': str(tmp_path)},
        )
    )
  with pytest.raises(ValueError, match='unknown config argument'):
    eval_config.get_config('varient=cfbi_resnet101')
  # --config.dataset over the synthetic defaults (bundled model, its test
  # scale) would evaluate DAVIS with them.
  synthetic_defaults = eval_config.get_config()
  assert tuple(synthetic_defaults.tta.scales) == (eval_config.SYNTHETIC_SCALE,)
  assert tuple(eval_config.get_config('dataset=davis2017').tta.scales) == (1.0,)
  with pytest.raises(ValueError, match='dataset=davis2017 instead of'):
    evaluation.run(
        dict_copy(
            synthetic_defaults, dataset='davis2017', output_dir=str(tmp_path)
        )
    )
  with pytest.raises(AttributeError):
    config = eval_config.get_config()
    config.lock()
    config.not_a_field = 1

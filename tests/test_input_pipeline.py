"""Tests for `cfbi_jax.input_pipeline` on tiny synthetic datasets.

YouTube-VOS and DAVIS layouts are written to a temporary folder (60x80
frames). Every frame is one flat colour that encodes (video, frame number):
flat colours survive JPEG, scaling and cropping exactly enough to tell which
file each output frame came from, which checks the sampling rules. Masks
hold moving boxes.
"""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from cfbi_jax import input_pipeline
from cfbi_jax import output_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

H, W = 60, 80
NUM_FRAMES = 2  # Current frames per clip; T = 4.
T = NUM_FRAMES + 2


def frame_colour(video, number):
  return np.array([20 + 40 * video, 10 + 6 * number, 128], np.uint8)


def decode_colour(pixel):
  """(video, frame number) of a frame's colour."""
  return (
      int(round((int(pixel[0]) - 20) / 40)),
      int(round((int(pixel[1]) - 10) / 6)),
  )


def write_frame(path, video, number):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = np.broadcast_to(frame_colour(video, number), (H, W, 3))
  tf.io.write_file(path, tf.io.encode_jpeg(image, quality=95))


def box_labels(number, objects):
  """Boxes that drift right with the frame number."""
  labels = np.zeros((H, W), np.uint8)
  for obj in objects:
    top = 4 + 18 * ((obj - 1) % 3)
    left = 4 + 20 * ((obj - 1) // 3) + number // 5
    labels[top : top + 14, left : left + 16] = obj
  return labels


def write_mask(path, labels):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  output_files.write_palette_png(path, labels)


YTB_VIDEOS = {
    # name: (video colour code, annotated frame numbers, objects: frames)
    'aaa': (
        0,
        range(0, 40, 5),
        {
            1: range(0, 40, 5),
            2: range(0, 40, 5),
            3: range(10, 40, 5),
            4: range(0, 40, 5),
        },
    ),
    'bbb': (
        1,
        range(0, 40, 5),
        {1: range(0, 25, 5), 2: range(15, 40, 5), 5: [35]},
    ),  # Object 5: one frame, skipped.
    'ccc': (2, [0], {1: [0]}),  # One annotated frame: skipped.
}


@pytest.fixture(scope='module')
def ytb_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('ytb'))
  meta = {'videos': {}}
  for name, (code, annotated, objects) in YTB_VIDEOS.items():
    for number in range(max(annotated) + 3):  # JPEGs of unannotated frames too.
      write_frame(
          os.path.join(root, 'train', 'JPEGImages', name, f'{number:05d}.jpg'),
          code,
          number,
      )
    for number in annotated:
      present = [o for o, frames in objects.items() if number in frames]
      write_mask(
          os.path.join(root, 'train', 'Annotations', name, f'{number:05d}.png'),
          box_labels(number, present),
      )
    meta['videos'][name] = {
        'objects': {
            str(o): {'category': 'x', 'frames': [f'{n:05d}' for n in frames]}
            for o, frames in objects.items()
        }
    }
  with open(os.path.join(root, 'train', 'meta.json'), 'w') as f:
    json.dump(meta, f)
  return root


@pytest.fixture(scope='module')
def davis_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('davis'))
  for code, name in ((3, 'bear'), (4, 'goat')):
    for number in range(6):
      write_frame(
          os.path.join(root, 'JPEGImages', '480p', name, f'{number:05d}.jpg'),
          code,
          number,
      )
      write_mask(
          os.path.join(root, 'Annotations', '480p', name, f'{number:05d}.png'),
          box_labels(number, [1, 2]),
      )
  os.makedirs(os.path.join(root, 'ImageSets', '2017'))
  with open(os.path.join(root, 'ImageSets', '2017', 'train.txt'), 'w') as f:
    f.write('bear\ngoat\n')
  return root


def small_config(root, **overrides):
  c = input_pipeline.default_data_config()
  c.root = root
  c.crop_size = 33
  c.short_edge = 40
  c.min_object_pixels = 20
  c.reference_min_pixels = 20
  c.crop_min_foreground = 0.05
  c.max_objects = 2
  c.update(overrides)
  return c


def take(config, num_batches, **kwargs):
  kwargs = {'batch_size': 2, 'num_frames': NUM_FRAMES, 'seed': 0, **kwargs}
  ds = input_pipeline.make_train_dataset(config, **kwargs)
  return list(ds.take(num_batches).as_numpy_iterator())


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for k in ('frames', 'labels', 'object_valid'):
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_default_config_has_recipe_values():
  c = input_pipeline.default_data_config()
  assert (c.crop_size, tuple(c.scale_range), c.short_edge) == (
      465,
      (1.0, 1.3),
      480,
  )
  assert (c.flip_prob, c.max_gap, c.reverse_prob) == (0.5, 3, 0.5)
  assert (c.crop_max_tries, c.min_object_pixels, c.max_objects) == (5, 100, 5)
  assert c.root == '' and c.source == 'youtubevos'


def test_youtube_vos_index_uses_annotated_frames(ytb_root):
  videos = input_pipeline.youtube_vos_train_videos(ytb_root)
  assert [v.name for v in videos] == ['aaa', 'bbb']
  for v in videos:
    assert [os.path.basename(p) for p in v.frame_paths] == [
        f'{n:05d}.jpg' for n in range(0, 40, 5)
    ]
    assert all(p.endswith('.png') and os.path.isfile(p) for p in v.mask_paths)


def test_davis_index(davis_root):
  videos = input_pipeline.davis_train_videos(davis_root)
  assert [v.name for v in videos] == ['bear', 'goat']
  assert len(videos[0].frame_paths) == len(videos[0].mask_paths) == 6


def test_batches_format_sampling_and_objects(ytb_root):
  batches = take(small_config(ytb_root), 4)
  seen_videos, steps = [], set()
  for batch in batches:
    assert batch['frames'].shape == (2, T, 33, 33, 3)
    assert batch['frames'].dtype == np.uint8
    assert batch['labels'].shape == (2, T, 33, 33)
    assert batch['labels'].dtype == np.uint8
    assert batch['object_valid'].shape == (2, 3)
    assert batch['object_valid'].dtype == bool
    for b in range(2):
      # Flat frames: every pixel names its source frame.
      codes = [decode_colour(batch['frames'][b, t, 16, 16]) for t in range(T)]
      for t in range(T):
        assert (
            np.abs(
                batch['frames'][b, t].astype(int)
                - batch['frames'][b, t, 16, 16]
            ).max()
            <= 3
        )
      video = {c[0] for c in codes}
      assert len(video) == 1
      seen_videos.append(video.pop())
      numbers = [c[1] for c in codes]
      assert all(n % 5 == 0 for n in numbers), numbers  # Annotated only.
      steps.update(np.diff(numbers[1:]) // 5)
      # Relabelled 1..K; the reference holds every kept object.
      valid = batch['object_valid'][b]
      k = int(valid.sum()) - 1
      assert valid[0] and list(valid) == [True] * (k + 1) + [False] * (2 - k)
      assert set(np.unique(batch['labels'][b, 0])) == set(range(k + 1))
      assert batch['labels'][b].max() <= k
      assert k >= 1  # Every reference here has objects to keep.
  # Epoch-wise permutation of the two usable videos.
  assert sorted(seen_videos[:2]) == sorted(seen_videos[2:4]) == [0, 1]
  assert steps <= {-3, -2, -1, 1, 2, 3}


def test_determinism_seeds_and_resume(ytb_root):
  config = small_config(ytb_root)
  run = take(config, 3)
  assert_batches_equal(run, take(config, 3))
  other = take(config, 3, seed=1)
  assert any(
      not np.array_equal(a['frames'], b['frames'])
      or not np.array_equal(a['labels'], b['labels'])
      for a, b in zip(run, other)
  )
  # Resuming after 2 optimizer steps: start_index = step * global batch.
  assert_batches_equal(run[2:], take(config, 1, start_index=2 * 2))


def test_shards_split_the_global_batch(ytb_root):
  config = small_config(ytb_root)
  single = take(config, 2, batch_size=4)
  hosts = [
      take(config, 2, batch_size=2, shard_index=h, num_shards=2)
      for h in range(2)
  ]
  for j, batch in enumerate(single):
    # Each host reads a contiguous block of the global batch, in order.
    np.testing.assert_array_equal(batch['index'], 4 * j + np.arange(4))
    np.testing.assert_array_equal(
        hosts[1][j]['index'], 4 * j + 2 + np.arange(2)
    )
    for k in batch:
      np.testing.assert_array_equal(
          batch[k], np.concatenate([hosts[0][j][k], hosts[1][j][k]])
      )
  # A resumed host sees its own continuation.
  resumed = take(
      config, 1, batch_size=2, shard_index=1, num_shards=2, start_index=1 * 4
  )
  assert_batches_equal(hosts[1][1:], resumed)


def test_davis_and_mixed_sources(davis_root, ytb_root):
  (batch,) = take(small_config(davis_root, source='davis', max_gap=1), 1)
  for b in range(2):
    codes = [decode_colour(batch['frames'][b, t, 0, 0]) for t in range(T)]
    assert {c[0] for c in codes} <= {3, 4}
    numbers = [c[1] for c in codes[1:]]
    assert set(np.abs(np.diff(numbers))) == {1}  # Consecutive frames.
  mixed = take(
      small_config(
          ytb_root, source='mixed', davis_root=davis_root, davis_repeat=3
      ),
      4,
  )
  videos = {
      decode_colour(batch['frames'][b, 0, 0, 0])[0]
      for batch in mixed
      for b in range(2)
  }
  assert videos & {0, 1} and videos & {3, 4}


def test_synthetic_source_draws_then_reads(tmp_path):
  root = str(tmp_path / 'synthetic')
  config = small_config(
      root,
      source='synthetic',
      synthetic_videos=2,
      synthetic_seed=9,
      short_edge=120,
      crop_size=65,
  )
  (batch,) = take(config, 1)
  with open(os.path.join(root, 'ImageSets', '2017', 'train.txt')) as f:
    assert f.read().split() == ['synth009-0000', 'synth009-0001']
  assert batch['frames'].shape == (2, T, 65, 65, 3)
  assert batch['object_valid'][:, 1].all()  # Balanced crops keep an object.


def test_bad_arguments(ytb_root):
  with pytest.raises(ValueError, match='root'):
    take(small_config(''), 1)
  with pytest.raises(ValueError, match='source'):
    take(small_config(ytb_root, source='kinetics'), 1)
  with pytest.raises(ValueError, match='shard_index'):
    take(small_config(ytb_root), 1, shard_index=2, num_shards=2)


def load_builder(folder, module_name):
  """Imports a `data/` builder module by path (it registers its builder).

  TFDS refuses a second registration of a name, so each module is loaded
  once per process (under `module_name`) and then reused.
  """
  if module_name in sys.modules:
    return sys.modules[module_name]
  spec = importlib.util.spec_from_file_location(
      module_name, os.path.join(REPO, 'data', folder, folder + '.py')
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  sys.modules[module_name] = module
  return module


def test_tfds_builders_give_the_same_batches(ytb_root, davis_root, tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = str(tmp_path / 'tfds')
  cases = [
      ('youtube_vos', 'CfbiYoutubeVos', ytb_root, 'youtubevos'),
      ('davis', 'CfbiDavis', davis_root, 'davis'),
  ]
  for folder, cls, root, source in cases:
    module = load_builder(folder, f'cfbi_test_builder_{folder}')
    builder = getattr(module, cls)(data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=root)
    )
    assert list(builder.info.splits) == ['train']
    from_files = take(small_config(root, source=source), 1)
    from_tfds = take(
        small_config(
            '', source='tfds', tfds_name=builder.name, tfds_data_dir=data_dir
        ),
        1,
    )
    assert_batches_equal(from_files, from_tfds)

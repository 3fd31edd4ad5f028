"""Tests for `cfbi_jax.datasets` on tiny synthetic datasets made in tmp_path.

Each test builds the layout it needs (DAVIS 2017 / 2016, YouTube-VOS, own
frame folders and an MP4 written with PyAV) at 24x32 pixels, then checks
what the readers return and that each kind of bad input raises
`DatasetError` with a message naming the problem.
"""

import json
import os

import av
import numpy as np
import pytest
from PIL import Image

from cfbi_jax import datasets
from cfbi_jax import masks
from cfbi_jax.datasets import DatasetError

H, W = 24, 32


def frame_rgb(seed, h=H, w=W):
  """A smooth deterministic RGB frame (survives JPEG well)."""
  rng = np.random.default_rng(seed)
  base = rng.integers(40, 216, size=3)
  ramp = np.linspace(-20, 20, w)[None, :, None]
  return np.clip(base + ramp + np.zeros((h, w, 3)), 0, 255).astype(np.uint8)


def save_frame(path, seed=0, h=H, w=W):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(frame_rgb(seed, h, w)).save(path, quality=95)


def save_mask(path, labels, mode='P'):
  """Saves `labels` as a palette ('P'), grayscale ('L') or colour PNG."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  labels = np.asarray(labels, np.uint8)
  if mode == 'P':
    img = Image.frombytes('P', labels.shape[::-1], labels.tobytes())
    img.putpalette(masks.DAVIS_PALETTE.reshape(-1).tolist())
  elif mode == 'L':
    img = Image.frombytes('L', labels.shape[::-1], labels.tobytes())
  else:
    img = Image.fromarray(masks.DAVIS_PALETTE[labels]).convert(mode)
  img.save(path)


def box_mask(obj_id=1, h=H, w=W, top=4, left=6, size=8):
  labels = np.zeros((h, w), np.uint8)
  labels[top : top + size, left : left + size] = obj_id
  return labels


def make_davis(
    root,
    seqs=('bear', 'cat'),
    n_frames=3,
    year_dir='2017',
    split_lines=None,
    split='val',
):
  for k, seq in enumerate(seqs):
    for i in range(n_frames):
      save_frame(
          os.path.join(root, 'JPEGImages', '480p', seq, f'{i:05d}.jpg'),
          seed=10 * k + i,
      )
    save_mask(
        os.path.join(root, 'Annotations', '480p', seq, '00000.png'),
        box_mask(1) + box_mask(2, top=14, left=20, size=6),
    )
  lines = split_lines if split_lines is not None else list(seqs)
  path = os.path.join(root, 'ImageSets', year_dir, f'{split}.txt')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


# ------------------------------------------------------------------ palette
def test_palette_formula():
  p = masks.DAVIS_PALETTE
  assert p.shape == (256, 3) and p.dtype == np.uint8
  np.testing.assert_array_equal(
      p[:6],
      [
          [0, 0, 0],
          [128, 0, 0],
          [0, 128, 0],
          [128, 128, 0],
          [0, 0, 128],
          [128, 0, 128],
      ],
  )
  np.testing.assert_array_equal(p[255], [224, 224, 192])


# -------------------------------------------------------------------- DAVIS
def test_davis_2017(tmp_path):
  root = str(tmp_path)
  make_davis(root, split_lines=['cat', 'bear', 'cat', ''])
  seqs = datasets.davis_sequences(root)
  assert [s.name for s in seqs] == ['bear', 'cat']
  seq = seqs[0]
  assert seq.frame_names == ['00000', '00001', '00002']
  assert list(seq.annotated) == [0] and len(seq) == 3
  assert seq.frame_size == (H, W)
  frame = seq.load_frame(1)
  assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
  assert np.abs(frame.astype(int) - frame_rgb(1)).mean() < 3
  labels = seq.load_annotation(0)
  np.testing.assert_array_equal(
      labels, box_mask(1) + box_mask(2, top=14, left=20, size=6)
  )
  assert seq.load_annotation(1) is None
  names = [(i, n) for i, n, _ in seq.iter_frames()]
  assert names == [(0, '00000'), (1, '00001'), (2, '00002')]


def test_davis_only_first_mask_and_test_dev(tmp_path):
  root = str(tmp_path)
  make_davis(root, seqs=('judo',), split='test-dev')
  save_mask(
      os.path.join(root, 'Annotations', '480p', 'judo', '00002.png'),
      box_mask(3),
  )
  (seq,) = datasets.davis_sequences(root, split='test-dev')
  assert list(seq.annotated) == [0]


def test_davis_2016_pairs_binarised(tmp_path):
  root = str(tmp_path)
  lines = [
      f'/JPEGImages/480p/{s}/{i:05d}.jpg /Annotations/480p/{s}/' f'{i:05d}.png'
      for s in ('cow', 'bear')
      for i in range(3)
  ]
  make_davis(root, seqs=('bear', 'cow'), year_dir='480p', split_lines=lines)
  # The original DAVIS 2016 masks are 0/255 grayscale.
  save_mask(
      os.path.join(root, 'Annotations', '480p', 'cow', '00000.png'),
      box_mask(255),
      mode='L',
  )
  seqs = datasets.davis_sequences(root, year=2016, single_object=True)
  assert [s.name for s in seqs] == ['bear', 'cow']
  for seq in seqs:
    np.testing.assert_array_equal(
        seq.load_annotation(0),
        box_mask(1)
        + box_mask(1, top=14, left=20, size=6) * (seq.name == 'bear'),
    )


def test_davis_2016_from_2017_image_sets(tmp_path):
  root = str(tmp_path)
  make_davis(root, seqs=('bear',), year_dir='2016')
  (seq,) = datasets.davis_sequences(root, year=2016, single_object=True)
  assert set(np.unique(seq.load_annotation(0))) == {0, 1}


def test_davis_missing_split_and_folder(tmp_path):
  root = str(tmp_path)
  with pytest.raises(DatasetError, match='split file'):
    datasets.davis_sequences(root)
  make_davis(root, seqs=('bear',), split_lines=['bear', 'ghost'])
  with pytest.raises(DatasetError, match='sequence folder.*ghost'):
    datasets.davis_sequences(root)


def test_davis_empty_and_unreadable_frames(tmp_path):
  root = str(tmp_path)
  make_davis(root, seqs=('bear',))
  folder = os.path.join(root, 'JPEGImages', '480p', 'bear')
  with open(os.path.join(folder, '00001.jpg'), 'wb') as f:
    f.write(b'not a jpeg')
  with open(os.path.join(folder, '00002.jpg'), 'wb') as f:
    f.write(b'')
  with pytest.raises(DatasetError, match='(?s)2 frame.*00001.jpg.*00002.jpg'):
    datasets.davis_sequences(root)
  (seq,) = datasets.davis_sequences(root, validate=False)
  with pytest.raises(DatasetError, match='unreadable frame.*00001.jpg'):
    seq.load_frame(1)
  for f in os.listdir(folder):
    os.remove(os.path.join(folder, f))
  with pytest.raises(DatasetError, match='no .jpg frames'):
    datasets.davis_sequences(root)


def test_davis_missing_annotation(tmp_path):
  root = str(tmp_path)
  make_davis(root, seqs=('bear',))
  os.remove(os.path.join(root, 'Annotations', '480p', 'bear', '00000.png'))
  with pytest.raises(DatasetError, match='missing annotation.*00000.png'):
    datasets.davis_sequences(root)


def test_davis_frames_of_different_sizes(tmp_path):
  root = str(tmp_path)
  make_davis(root, seqs=('bear',))
  save_frame(
      os.path.join(root, 'JPEGImages', '480p', 'bear', '00002.jpg'), h=H + 2
  )
  with pytest.raises(DatasetError, match='differ in size.*00002.jpg'):
    datasets.davis_sequences(root)


# -------------------------------------------------------------- YouTube-VOS
def make_youtube_vos(split_dir, n_jpegs=11):
  """Video 'v1': object 1 from 00000, object 2 appearing at 00005.

  The JPEG folder holds every frame (as in valid_all_frames); meta.json
  lists every fifth.
  """
  for i in range(n_jpegs):
    save_frame(os.path.join(split_dir, 'JPEGImages', 'v1', f'{i:05d}.jpg'), i)
  save_mask(
      os.path.join(split_dir, 'Annotations', 'v1', '00000.png'), box_mask(1)
  )
  save_mask(
      os.path.join(split_dir, 'Annotations', 'v1', '00005.png'),
      box_mask(2, top=14, left=20, size=6),
  )
  save_frame(os.path.join(split_dir, 'JPEGImages', 'v0', '00003.jpg'))
  save_mask(
      os.path.join(split_dir, 'Annotations', 'v0', '00003.png'), box_mask(1)
  )
  meta = {
      'videos': {
          'v1': {
              'objects': {
                  '1': {
                      'category': 'cat',
                      'frames': ['00000', '00005', '00010'],
                  },
                  '2': {'category': 'dog', 'frames': ['00005', '00010']},
              }
          },
          'v0': {'objects': {'1': {'category': 'x', 'frames': ['00003']}}},
      }
  }
  with open(os.path.join(split_dir, 'meta.json'), 'w') as f:
    json.dump(meta, f)


@pytest.mark.parametrize('use_parent', [False, True])
def test_youtube_vos(tmp_path, use_parent):
  split_dir = os.path.join(str(tmp_path), 'valid')
  make_youtube_vos(split_dir)
  root = str(tmp_path) if use_parent else split_dir
  seqs = datasets.youtube_vos_sequences(root)
  assert [s.name for s in seqs] == ['v0', 'v1']
  assert seqs[0].frame_names == ['00003']
  seq = seqs[1]
  assert seq.frame_names == ['00000', '00005', '00010']
  assert sorted(seq.annotated) == [0, 1]
  assert seq.annotated[1].endswith(os.path.join('v1', '00005.png'))
  np.testing.assert_array_equal(
      seq.load_annotation(1), box_mask(2, top=14, left=20, size=6)
  )
  assert seq.load_annotation(2) is None
  assert np.abs(seq.load_frame(2).astype(int) - frame_rgb(10)).mean() < 3


def test_youtube_vos_errors(tmp_path):
  split_dir = os.path.join(str(tmp_path), 'valid')
  with pytest.raises(DatasetError, match='meta.json'):
    datasets.youtube_vos_sequences(str(tmp_path))
  make_youtube_vos(split_dir)
  os.remove(os.path.join(split_dir, 'JPEGImages', 'v1', '00005.jpg'))
  os.remove(os.path.join(split_dir, 'JPEGImages', 'v1', '00010.jpg'))
  with pytest.raises(DatasetError, match='2 frame.*missing.*00005.jpg'):
    datasets.youtube_vos_sequences(split_dir)
  make_youtube_vos(split_dir)
  os.remove(os.path.join(split_dir, 'Annotations', 'v1', '00005.png'))
  with pytest.raises(DatasetError, match='missing annotation.*00005.png'):
    datasets.youtube_vos_sequences(split_dir)


def test_youtube_vos_meta_reader(tmp_path):
  split_dir = os.path.join(str(tmp_path), 'valid')
  with pytest.raises(DatasetError, match='neither .*meta.json nor .*valid'):
    datasets.read_youtube_vos_meta(str(tmp_path), 'valid')
  make_youtube_vos(split_dir)
  root, videos = datasets.read_youtube_vos_meta(str(tmp_path), 'valid')
  assert root == split_dir and list(videos) == ['v0', 'v1']
  assert videos['v1'] == {
      '1': ['00000', '00005', '00010'],
      '2': ['00005', '00010'],
  }
  meta_path = os.path.join(split_dir, 'meta.json')
  for text, message in [
      ('{"videos": ', 'meta.json is not valid JSON'),
      ('[]', 'no "videos" object'),
      ('{"videos": {"v": {}}}', 'video v has no "objects"'),
      (
          '{"videos": {"v": {"objects": {"1": {}}}}}',
          'object 1 of video v has no "frames"',
      ),
      (
          '{"videos": {"v": {"objects": {"1": {"frames": [0]}}}}}',
          'object 1 of video v has no "frames"',
      ),
  ]:
    with open(meta_path, 'w') as f:
      f.write(text)
    with pytest.raises(DatasetError, match=message):
      datasets.read_youtube_vos_meta(split_dir, 'valid')


def test_youtube_vos_max_objects(tmp_path):
  make_youtube_vos(str(tmp_path))
  with pytest.raises(DatasetError, match=r'00005.png has object ids \[2\]'):
    datasets.youtube_vos_sequences(str(tmp_path), max_objects=1)


# ---------------------------------------------------------------- own video
def test_own_frame_folder_natural_order(tmp_path):
  frames = tmp_path / 'clip'
  frames.mkdir()
  for k, stem in enumerate(['f10', 'f1', 'f2']):
    Image.fromarray(frame_rgb(k)).save(frames / f'{stem}.png')
  mask_dir = tmp_path / 'masks'
  save_mask(str(mask_dir / 'f1.png'), box_mask(1))
  save_mask(str(mask_dir / 'f10.png'), box_mask(2, top=14, left=20, size=6))
  seq = datasets.own_video_sequence(str(frames), str(mask_dir))
  assert seq.name == 'clip'
  assert seq.frame_names == ['f1', 'f2', 'f10']
  assert sorted(seq.annotated) == [0, 2]
  # PNG frames are lossless; f10 was written first (seed 0).
  np.testing.assert_array_equal(seq.load_frame(2), frame_rgb(0))
  single = datasets.own_video_sequence(
      str(frames), str(mask_dir / 'f1.png'), name='x'
  )
  assert single.name == 'x' and list(single.annotated) == [0]


def write_test_video(path, n, h=H, w=W):
  """Near-lossless H.264 (yuv444p, qp 0), else high-rate MPEG-4."""
  try:
    av.codec.Codec('libx264', 'w')
    codec, pix_fmt, options = 'libx264', 'yuv444p', {'qp': '0'}
  except ValueError:
    codec, pix_fmt, options = 'mpeg4', 'yuv420p', {'qscale': '1'}
  with av.open(str(path), 'w') as container:
    stream = container.add_stream(codec, rate=10)
    stream.height, stream.width, stream.pix_fmt = h, w, pix_fmt
    stream.options = options
    for i in range(n):
      frame = av.VideoFrame.from_ndarray(frame_rgb(i, h, w), format='rgb24')
      container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def test_own_video_file(tmp_path):
  video = tmp_path / 'walk.mp4'
  write_test_video(video, 6)
  mask_dir = tmp_path / 'masks'
  save_mask(str(mask_dir / '00000.png'), box_mask(1))
  save_mask(str(mask_dir / '3.png'), box_mask(2, top=14, left=20, size=6))
  seq = datasets.own_video_sequence(str(video), str(mask_dir))
  assert seq.name == 'walk' and seq.video_path == str(video)
  assert seq.frame_names == [f'{i:05d}' for i in range(6)]
  assert seq.frame_size == (H, W) and sorted(seq.annotated) == [0, 3]
  frames = list(seq.iter_frames())
  assert [i for i, _, _ in frames] == list(range(6))
  for i, _, rgb in frames:
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - frame_rgb(i)).mean() < 4
  # Random access: forward continues the decoder, backward restarts it.
  np.testing.assert_array_equal(seq.load_frame(4), frames[4][2])
  np.testing.assert_array_equal(seq.load_frame(5), frames[5][2])
  np.testing.assert_array_equal(seq.load_frame(1), frames[1][2])
  np.testing.assert_array_equal(
      seq.load_annotation(3), box_mask(2, top=14, left=20, size=6)
  )
  # A sequence claiming more frames than the file holds.
  longer = datasets.VideoSequence(
      name='walk',
      frame_names=[f'{i:05d}' for i in range(8)],
      annotated={0: str(mask_dir / '00000.png')},
      video_path=str(video),
  )
  with pytest.raises(DatasetError, match='walk.mp4 has 6 frames, expected 8'):
    longer.validate()
  with pytest.raises(DatasetError, match='ended after 6 frames; frame 7'):
    longer.load_frame(7)
  with pytest.raises(DatasetError, match='ended after 6 frames; 8 were'):
    list(longer.iter_frames())


def test_own_video_errors(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  mask = tmp_path / 'm.png'
  save_mask(str(mask), box_mask(1))
  with pytest.raises(DatasetError, match='no frames'):
    datasets.own_video_sequence(str(empty), str(mask))
  with pytest.raises(DatasetError, match='missing video'):
    datasets.own_video_sequence(str(tmp_path / 'nope'), str(mask))
  text = tmp_path / 'clip.txt'
  text.write_text('x')
  with pytest.raises(DatasetError, match='not a frame folder or a video'):
    datasets.own_video_sequence(str(text), str(mask))
  broken = tmp_path / 'broken.mp4'
  broken.write_bytes(b'\x00' * 100)
  with pytest.raises(DatasetError, match='broken.mp4'):
    datasets.own_video_sequence(str(broken), str(mask))

  frames = tmp_path / 'frames'
  for i in range(3):
    save_frame(str(frames / f'{i:05d}.jpg'), i)
  mask_dir = tmp_path / 'masks'
  save_mask(str(mask_dir / '00001.png'), box_mask(1))
  with pytest.raises(DatasetError, match='no mask for the first frame'):
    datasets.own_video_sequence(str(frames), str(mask_dir))
  save_mask(str(mask_dir / 'other.png'), box_mask(1))
  with pytest.raises(DatasetError, match='name no frame.*other.png'):
    datasets.own_video_sequence(str(frames), str(mask_dir))
  with pytest.raises(DatasetError, match='missing mask'):
    datasets.own_video_sequence(str(frames), str(tmp_path / 'nomask'))


@pytest.mark.parametrize('mode', ['RGB', 'RGBA'])
def test_colour_mask_rejected(tmp_path, mode):
  frames = tmp_path / 'frames'
  save_frame(str(frames / '00000.jpg'))
  mask = tmp_path / 'rgb.png'
  save_mask(str(mask), box_mask(1), mode=mode)
  with pytest.raises(
      DatasetError, match=f'rgb.png is a colour .{mode}.*palette'
  ):
    datasets.own_video_sequence(str(frames), str(mask))


def test_grayscale_masks(tmp_path):
  frames = tmp_path / 'frames'
  save_frame(str(frames / '00000.jpg'))
  ids = tmp_path / 'ids.png'
  save_mask(str(ids), box_mask(2), mode='L')
  seq = datasets.own_video_sequence(str(frames), str(ids))
  np.testing.assert_array_equal(seq.load_annotation(0), box_mask(2))
  # A 0/255 binary mask (grayscale or palette) is one object.
  for mode in ('L', 'P'):
    binary = tmp_path / f'binary_{mode}.png'
    save_mask(str(binary), box_mask(255), mode=mode)
    seq = datasets.own_video_sequence(str(frames), str(binary))
    np.testing.assert_array_equal(seq.load_annotation(0), box_mask(1))
  # Anti-aliased (other large values) is still refused.
  blurred = tmp_path / 'blurred.png'
  save_mask(str(blurred), box_mask(255) - box_mask(127, size=4), mode='L')
  with pytest.raises(DatasetError, match='blurred.png is a grayscale'):
    datasets.own_video_sequence(str(frames), str(blurred))


def test_void_pixels_are_kept_as_void(tmp_path):
  frames = tmp_path / 'frames'
  save_frame(str(frames / '00000.jpg'))
  labels = box_mask(2) + box_mask(1, top=14, left=20, size=6)
  labels[0, :] = labels[-1, :] = 255  # A void border, as other tools write.
  path = tmp_path / 'void.png'
  save_mask(str(path), labels)
  seq = datasets.own_video_sequence(str(frames), str(path), max_objects=2)
  np.testing.assert_array_equal(seq.load_annotation(0), labels)
  assert masks.largest_object_id(labels) == 2


def test_mask_size_empty_and_max_objects(tmp_path):
  frames = tmp_path / 'frames'
  save_frame(str(frames / '00000.jpg'))
  small = tmp_path / 'small.png'
  save_mask(str(small), box_mask(1, h=H - 4))
  with pytest.raises(DatasetError, match='small.png is 32x20.*frame is 32x24'):
    datasets.own_video_sequence(str(frames), str(small))
  # Not validated up front: load_annotation still checks the frame size.
  seq = datasets.own_video_sequence(str(frames), str(small), validate=False)
  with pytest.raises(DatasetError, match='small.png is 32x20'):
    seq.load_annotation(0)
  empty = tmp_path / 'empty.png'
  save_mask(str(empty), np.zeros((H, W)))
  with pytest.raises(DatasetError, match='empty.png contains no object'):
    datasets.own_video_sequence(str(frames), str(empty))
  many = tmp_path / 'many.png'
  save_mask(str(many), box_mask(1) + box_mask(5, top=14, left=20, size=6))
  with pytest.raises(
      DatasetError,
      match=r'many.png has object ids \[5\] above '
      r'max_objects=4; raise it with --config.max_objects=5',
  ):
    datasets.own_video_sequence(str(frames), str(many), max_objects=4)
  seq = datasets.own_video_sequence(str(frames), str(many), max_objects=5)
  assert seq.load_annotation(0).max() == 5


def test_unreadable_mask(tmp_path):
  frames = tmp_path / 'frames'
  save_frame(str(frames / '00000.jpg'))
  bad = tmp_path / 'bad.png'
  bad.write_bytes(b'garbage')
  with pytest.raises(DatasetError, match='unreadable annotation.*bad.png'):
    datasets.own_video_sequence(str(frames), str(bad))

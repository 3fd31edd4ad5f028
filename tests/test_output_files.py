"""Tests for `cfbi_jax.output_files`: files round-trip, layouts, formats.

Everything is written under tmp_path; after each writer the folder is
checked for leftover temporary files.
"""

import os
import zipfile

import av
import numpy as np
import pytest
from PIL import Image

from cfbi_jax import masks
from cfbi_jax import output_files

H, W = 24, 32


def labels_map(seed=0, h=H, w=W, k=5):
  return np.random.default_rng(seed).integers(0, k + 1, (h, w)).astype(np.uint8)


def test_palette_png_round_trip(tmp_path):
  labels = labels_map()
  path = tmp_path / 'seq' / '00000.png'
  output_files.write_palette_png(str(path), labels)
  assert os.listdir(tmp_path / 'seq') == ['00000.png']
  with Image.open(path) as img:
    assert img.mode == 'P' and img.size == (W, H)
    np.testing.assert_array_equal(np.asarray(img), labels)
    palette = np.asarray(img.getpalette()).reshape(-1, 3)
  np.testing.assert_array_equal(palette, masks.DAVIS_PALETTE)
  # Overwriting replaces the file in place.
  output_files.write_palette_png(str(path), labels * 0)
  with Image.open(path) as img:
    assert not np.asarray(img).any()
  assert os.listdir(tmp_path / 'seq') == ['00000.png']


def test_palette_png_rejects_bad_labels(tmp_path):
  with pytest.raises(ValueError, match='0..255'):
    output_files.write_palette_png(
        str(tmp_path / 'a.png'), np.full((2, 2), 300, np.int32)
    )
  with pytest.raises(ValueError, match='integer'):
    output_files.write_palette_png(str(tmp_path / 'a.png'), np.zeros((2, 2)))
  assert not os.listdir(tmp_path)


def test_write_probabilities(tmp_path):
  probs = np.random.default_rng(0).random((3, H, W))
  path = tmp_path / 'p' / '00001.npz'
  output_files.write_probabilities(str(path), probs)
  assert os.listdir(tmp_path / 'p') == ['00001.npz']
  with np.load(path) as data:
    assert list(data.keys()) == ['probs']
    assert data['probs'].dtype == np.float32
    np.testing.assert_array_equal(data['probs'], probs.astype(np.float32))
  with pytest.raises(ValueError, match='K \\+ 1, H, W'):
    output_files.write_probabilities(str(path), probs[0])


def test_sequence_done(tmp_path):
  names = ['00000', '00005']
  seq = str(tmp_path / 'seq')
  assert not output_files.sequence_done(seq, names)
  output_files.write_palette_png(os.path.join(seq, '00000.png'), labels_map())
  assert not output_files.sequence_done(seq, names)
  output_files.write_palette_png(os.path.join(seq, '00005.png'), labels_map())
  assert output_files.sequence_done(seq, names)
  assert not output_files.sequence_done(seq, [])


def test_youtube_vos_zip(tmp_path):
  ann = tmp_path / 'results' / 'Annotations'
  for seq, frames in [('b', ['00000', '00005']), ('a', ['00003'])]:
    for fr in frames:
      output_files.write_palette_png(str(ann / seq / f'{fr}.png'), labels_map())
  (ann / 'a' / '.00003.123.tmp.png').write_bytes(b'partial')
  zip_path = tmp_path / 'results' / 'submission.zip'
  assert output_files.write_youtube_vos_zip(str(ann), str(zip_path)) == str(
      zip_path
  )
  with zipfile.ZipFile(zip_path) as zf:
    assert zf.namelist() == [
        'Annotations/a/00003.png',
        'Annotations/b/00000.png',
        'Annotations/b/00005.png',
    ]
    assert (
        zf.read('Annotations/b/00005.png')
        == (ann / 'b' / '00005.png').read_bytes()
    )
  assert sorted(os.listdir(tmp_path / 'results')) == [
      'Annotations',
      'submission.zip',
  ]
  # The folder's own name does not matter.
  os.rename(ann, tmp_path / 'preds')
  output_files.write_youtube_vos_zip(str(tmp_path / 'preds'), str(zip_path))
  with zipfile.ZipFile(zip_path) as zf:
    assert zf.namelist()[0] == 'Annotations/a/00003.png'
  with pytest.raises(FileNotFoundError):
    output_files.write_youtube_vos_zip(str(tmp_path / 'nope'), str(zip_path))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='no <seq>'):
    output_files.write_youtube_vos_zip(str(tmp_path / 'empty'), str(zip_path))


def test_overlay_hand_computed():
  rgb = np.full((6, 6, 3), (100, 50, 200), np.uint8)
  labels = np.zeros((6, 6), np.uint8)
  labels[1:5, 1:5] = 1
  out = output_files.overlay(rgb, labels, alpha=0.5)
  # Interior: 0.5 * (100, 50, 200) + 0.5 * (128, 0, 0) = (114, 25, 100).
  np.testing.assert_array_equal(out[2, 2], [114, 25, 100])
  np.testing.assert_array_equal(out[1, 1], [0, 0, 0])  # boundary
  np.testing.assert_array_equal(out[0, 0], [100, 50, 200])  # background
  edge = np.zeros((6, 6), bool)
  edge[1:5, 1:5] = True
  edge[2:4, 2:4] = False
  assert (out[edge] == 0).all() and (out[2:4, 2:4] == [114, 25, 100]).all()
  plain = output_files.overlay(rgb, labels, alpha=0.25, boundary_color=None)
  # 0.75 * (100, 50, 200) + 0.25 * (128, 0, 0) = (107, 37.5, 150) -> 38 (rint).
  np.testing.assert_array_equal(plain[1, 1], [107, 38, 150])
  assert rgb[2, 2].tolist() == [100, 50, 200]  # input untouched


@pytest.mark.parametrize('codec', ['default', 'mpeg4'])
def test_overlay_video_odd_size(tmp_path, monkeypatch, codec):
  if codec == 'mpeg4':  # the fallback when PyAV has no H.264 encoder
    monkeypatch.setattr(output_files, '_video_codec', lambda: 'mpeg4')
  h, w, n = 23, 31, 5
  colours = [
      (200, 40, 40),
      (40, 200, 40),
      (40, 40, 200),
      (128, 128, 128),
      (220, 220, 60),
  ]
  frames = (np.full((h, w, 3), c, np.uint8) for c in colours)
  path = tmp_path / 'vis' / 'seq.mp4'
  assert output_files.write_overlay_video(str(path), frames, fps=29.97) == n
  assert os.listdir(tmp_path / 'vis') == ['seq.mp4']
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    assert stream.codec_context.name == (
        'mpeg4'
        if codec == 'mpeg4'
        else output_files._video_codec().replace('libx264', 'h264')
    )
    assert abs(float(stream.average_rate) - 29.97) < 0.01
    decoded = [f.to_ndarray(format='rgb24') for f in container.decode(video=0)]
  assert len(decoded) == n
  for rgb, c in zip(decoded, colours):
    assert rgb.shape == (h + 1, w + 1, 3)
    np.testing.assert_allclose(rgb.reshape(-1, 3).mean(0), c, atol=6)


def test_overlay_video_errors(tmp_path):
  with pytest.raises(ValueError, match='no frames'):
    output_files.write_overlay_video(str(tmp_path / 'a.mp4'), [], fps=5)
  frames = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)]
  with pytest.raises(ValueError, match='frame 1'):
    output_files.write_overlay_video(str(tmp_path / 'a.mp4'), frames, fps=5)
  assert not os.listdir(tmp_path)

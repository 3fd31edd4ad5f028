"""Training input pipeline: videos on disk -> augmented, batched clips.

`make_train_dataset(config.data, batch_size=..., num_frames=..., seed=...)`
is the one entry point the trainer calls. Each element is a per-host batch

  {'frames': [B, T, S, S, 3] uint8,   # RGB; normalisation is the model's job
   'labels': [B, T, S, S] uint8,      # 0 = background, 1..K objects
   'object_valid': [B, max_objects + 1] bool,
   'index': [B] int64}                 # each clip's element index

with S = `crop_size` and T = 2 + num_frames: index 0 is the reference frame,
index 1 the "previous" frame whose ground truth seeds the recurrence, then
`num_frames` current frames. `object_valid[:, 0]` (background) is True and
slot k is True iff object k exists after relabelling.

Clip sampling (notes §19; one clip per element):

1. Video: element i of the infinite stream belongs to epoch
   `i // num_videos`; each epoch visits every video once, in a permutation
   drawn from `(seed, epoch)`.
2. Frames, among the video's annotated frames only (YouTube-VOS: the frames
   of `meta.json`'s objects with >= 2 frames, one in five of the video;
   DAVIS: all): `preprocess.sample_frame_indices` picks the previous and
   current frames (random gaps 1..`max_gap`, reversal with `reverse_prob`;
   or, with `frame_sampling='pairs'`, each uniform over the video)
   and `reference_tries` reference candidates; the first candidate whose
   mask has more than `reference_min_pixels` foreground pixels is the
   reference (else the candidate with the most foreground).
3. Augmentation, one draw per clip: `random_scale` -> `balanced_random_crop`
   -> `select_objects` (at most `max_objects`, relabelled 1..K, others ->
   background) -> `random_flip`.

Objects that appear in the previous / current frames but not (or too
small) in the cropped reference are background in every frame.

Determinism and resume: the stream is a pure function of `seed`, the element
index and the data. It is built from `tf.data.Dataset.range` and every
random decision of element i comes from stateless TF random ops keyed by
`(seed, i)`; there is no shuffle buffer and no stateful RNG, and the
parallel map keeps order. One global step consumes the
`batch_size * num_shards` consecutive element indices from
`start_index + step * batch_size * num_shards`, and host `shard_index` of
`num_shards` reads the contiguous block `shard_index * batch_size +
[0, batch_size)` of them. The global batch is then the same clips in the same
order whatever the number of hosts (the hosts' blocks, concatenated in
process order, are what `sharding.global_array` assembles), so a multi-host
run computes what one process would, dropout masks included. To resume
after `step` completed optimizer steps, pass

  start_index = step * batch_size * num_shards   # = step * global batch

(with the same seed and data config): every host then sees exactly the
batches an uninterrupted run would have given it from that step on, with
the same or with another host count of the same global batch.

Keep the dataset's iterator in a function scope (or `del` it) so that it
is freed before the interpreter shuts down: with clips still being loaded
by `tf.numpy_function`, an iterator left in module globals made the process
hang at exit in about two runs out of three here.

TensorFlow is imported only here and in `preprocess` (and `data/`); it is
kept off accelerators at import. A 480p clip (T = 5, crop 465) took about
0.15 s on two shared CPU cores.
"""

import dataclasses
import io
import os
from typing import Callable, List, Sequence, Tuple

import ml_collections
import numpy as np
from PIL import Image
import tensorflow as tf

from cfbi_jax import datasets
from cfbi_jax.data_config import default_data_config  # pylint: disable=unused-import
from cfbi_jax import preprocess
from cfbi_jax import synthetic

try:
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # Runtime already initialised: harmless.
  pass

SOURCES = ('youtubevos', 'davis', 'mixed', 'tfds', 'synthetic')

# Salt of the root key, so that seeds 0, 1, ... do not give the raw Philox
# keys (0, 0), (1, 0), ... that other code may also use.
_SALT = 0xC0FB1


@dataclasses.dataclass(frozen=True)
class TrainVideo:
  """One training video on disk: its annotated frames, in time order.

  Attributes:
    name: sequence name.
    frame_paths: JPEG of each annotated frame.
    mask_paths: palette PNG of the same frames.
  """

  name: str
  frame_paths: Tuple[str, ...]
  mask_paths: Tuple[str, ...]


def youtube_vos_train_videos(
    root: str, split: str = 'train'
) -> List[TrainVideo]:
  """Training videos of YouTube-VOS, from `meta.json`.

  A video's frames are the union of its objects' frame lists (the
  annotated frames, every fifth frame), counting only objects listed in
  at least 2 frames; videos left with fewer than 2 frames are skipped.

  Args:
    root: the split folder (holding `meta.json`, `JPEGImages`,
      `Annotations`) or its parent.
    split: the split folder name when `root` is the parent.

  Returns:
    Videos in name order.

  Raises:
    datasets.DatasetError: no, unreadable or malformed `meta.json`
      (`datasets.read_youtube_vos_meta`), or no usable video.
  """
  root, videos = datasets.read_youtube_vos_meta(root, split)
  meta_path = os.path.join(root, 'meta.json')
  out = []
  for name, objects in videos.items():
    frames = sorted(
        {
            fr
            for obj_frames in objects.values()
            if len(obj_frames) >= 2
            for fr in obj_frames
        }
    )
    if len(frames) < 2:
      continue
    out.append(
        TrainVideo(
            name=name,
            frame_paths=tuple(
                os.path.join(root, 'JPEGImages', name, fr + '.jpg')
                for fr in frames
            ),
            mask_paths=tuple(
                os.path.join(root, 'Annotations', name, fr + '.png')
                for fr in frames
            ),
        )
    )
  if not out:
    raise datasets.DatasetError(f'{meta_path}: no video with >= 2 frames')
  return out


def davis_train_videos(
    root: str, split: str = 'train', resolution: str = '480p'
) -> List[TrainVideo]:
  """Training videos of DAVIS 2017 (`ImageSets/2017/<split>.txt`).

  Every frame is annotated: `Annotations/<resolution>/<seq>/<frame>.png`.
  Sequences with fewer than 2 frames are skipped.

  Args:
    root: DAVIS folder (holding `ImageSets`, `JPEGImages`, `Annotations`).
    split: split file name without `.txt`.
    resolution: '480p' or 'Full-Resolution'.

  Returns:
    Videos in name order.

  Raises:
    datasets.DatasetError: missing split file or sequence folder.
  """
  mask_root = os.path.join(root, 'Annotations', resolution)
  out = []
  for seq in datasets.davis_sequences(
      root, split=split, year=2017, resolution=resolution, validate=False
  ):
    if len(seq) < 2:
      continue
    out.append(
        TrainVideo(
            name=seq.name,
            frame_paths=tuple(seq.frame_paths),
            mask_paths=tuple(
                os.path.join(mask_root, seq.name, stem + '.png')
                for stem in seq.frame_names
            ),
        )
    )
  return out


def _read_jpeg(data) -> np.ndarray:
  """`[H, W, 3]` uint8 RGB from a path or a file object (PIL, as evaluation)."""
  with Image.open(data) as img:
    return np.asarray(img.convert('RGB'))


def _gather_clip(
    read_frame: Callable[[int], np.ndarray],
    read_mask: Callable[[int], np.ndarray],
    reference: np.ndarray,
    sequence: np.ndarray,
    reference_min_pixels: int,
) -> Tuple[np.ndarray, np.ndarray]:
  """Reads the reference (first good candidate) and the sequence frames."""
  masks = {}

  def mask(j):
    if j not in masks:
      masks[j] = read_mask(j)
    return masks[j]

  ref, best = None, -1
  for j in (int(j) for j in reference):
    foreground = int(np.count_nonzero(mask(j)))
    if foreground > reference_min_pixels:
      ref = j
      break
    if foreground > best:
      ref, best = j, foreground
  order = [ref] + [int(j) for j in sequence]
  frames = [read_frame(j) for j in order]
  labels = [mask(j) for j in order]
  if len({f.shape for f in frames}) > 1 or any(
      m.shape != f.shape[:2] for m, f in zip(labels, frames)
  ):
    raise datasets.DatasetError(
        f'frames / masks of one clip differ in size: '
        f'{[f.shape for f in frames]} / {[m.shape for m in labels]}'
    )
  return np.stack(frames), np.stack(labels)


class _FileVideos:
  """Clip loader over `TrainVideo`s (standard layouts on disk)."""

  def __init__(self, videos: Sequence[TrainVideo], reference_min_pixels: int):
    self.videos = list(videos)
    self.lengths = [len(v.frame_paths) for v in self.videos]
    self._reference_min_pixels = reference_min_pixels

  def __call__(self, video, reference, sequence):
    v = self.videos[int(video)]
    return _gather_clip(
        lambda j: _read_jpeg(v.frame_paths[j]),
        lambda j: datasets.read_mask(v.mask_paths[j]),
        reference,
        sequence,
        self._reference_min_pixels,
    )


def tfds_video_features():
  """The record format of the `data/` TFDS builders: one whole video.

  Returns:
    `tfds.features.FeaturesDict`: 'name' (text), 'num_frames' (int32),
    'frame_names' (text per frame), 'frames' (the frames' JPEG file bytes,
    unchanged) and 'masks' (`[num_frames, H, W]` uint8 object ids,
    zlib-compressed).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds.features.FeaturesDict(
      {
          'name': tfds.features.Text(),
          'num_frames': tfds.features.Scalar(np.int32),
          'frame_names': tfds.features.Sequence(tfds.features.Text()),
          'frames': tfds.features.Sequence(
              tfds.features.Tensor(shape=(), dtype=np.object_)
          ),
          'masks': tfds.features.Tensor(
              shape=(None, None, None),
              dtype=np.uint8,
              encoding=tfds.features.Encoding.ZLIB,
          ),
      }
  )


def tfds_video_example(video: TrainVideo) -> dict:
  """One record of `tfds_video_features` from a video on disk.

  Raises:
    datasets.DatasetError: a missing or malformed mask.
  """
  frames = []
  for path in video.frame_paths:
    with open(path, 'rb') as f:
      frames.append(f.read())
  return {
      'name': video.name,
      'num_frames': len(frames),
      'frame_names': [
          os.path.splitext(os.path.basename(p))[0] for p in video.frame_paths
      ],
      'frames': frames,
      'masks': np.stack([datasets.read_mask(p) for p in video.mask_paths]),
  }


def tfds_video_metadata(videos: Sequence[TrainVideo]) -> dict:
  """What the builders store per split: names and frame counts, in order."""
  return {
      'names': [v.name for v in videos],
      'num_frames': [len(v.frame_paths) for v in videos],
  }


class _TfdsVideos:
  """Clip loader over whole-video records of the `data/` TFDS builders.

  Records are read by index through TFDS's random-access data source
  (array_record files), so element i needs no reader state either. The
  builders write videos in name order (no shuffling) and store every
  split's names and frame counts in the dataset metadata.
  """

  def __init__(
      self, name: str, data_dir: str, split: str, reference_min_pixels: int
  ):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = tfds.builder(name, data_dir=data_dir or None)
    self._source = builder.as_data_source(split=split)
    meta = builder.info.metadata[split]
    self.names = list(meta['names'])
    self.lengths = [int(n) for n in meta['num_frames']]
    if len(self.lengths) != len(self._source):
      raise datasets.DatasetError(
          f'{name}: metadata lists {len(self.lengths)} videos, the {split} '
          f'split holds {len(self._source)}'
      )
    self._reference_min_pixels = reference_min_pixels

  def __call__(self, video, reference, sequence):
    record = self._source[int(video)]
    name = record['name']
    name = name.decode() if isinstance(name, bytes) else str(name)
    if name != self.names[int(video)]:
      raise datasets.DatasetError(
          f'record {int(video)} is {name!r}, metadata says '
          f'{self.names[int(video)]!r}; rebuild the dataset'
      )
    return _gather_clip(
        lambda j: _read_jpeg(io.BytesIO(record['frames'][j])),
        lambda j: record['masks'][j],
        reference,
        sequence,
        self._reference_min_pixels,
    )


def _make_loader(config: ml_collections.ConfigDict):
  """The clip loader of `config.source` (videos indexed in Python)."""
  if config.source not in SOURCES:
    raise ValueError(
        f'unknown data source {config.source!r}; expected one ' f'of {SOURCES}'
    )
  if config.source == 'tfds':
    return _TfdsVideos(
        config.tfds_name,
        config.tfds_data_dir,
        config.tfds_split,
        config.reference_min_pixels,
    )
  if not config.root:
    raise ValueError('config.data.root (the dataset folder) is required')
  if config.source == 'youtubevos':
    videos = youtube_vos_train_videos(config.root, config.split)
  elif config.source in ('davis', 'synthetic'):
    if config.source == 'synthetic':
      synthetic.ensure_davis_dataset(
          config.root,
          config.synthetic_videos,
          config.synthetic_seed,
          split=config.split,
      )
    videos = davis_train_videos(
        config.root, config.split, config.davis_resolution
    )
  else:
    if not config.davis_root:
      raise ValueError("source 'mixed' needs config.data.davis_root")
    videos = youtube_vos_train_videos(config.root, config.split) + (
        davis_train_videos(config.davis_root, 'train', config.davis_resolution)
        * config.davis_repeat
    )
  if not videos:
    raise datasets.DatasetError(f'no training videos under {config.root}')
  return _FileVideos(videos, config.reference_min_pixels)


def make_train_dataset(
    data_config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    num_frames: int,
    seed: int,
    start_index: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
) -> tf.data.Dataset:
  """The infinite, deterministic stream of training batches of one host.

  See the module docstring for the element format, the sampling rules and
  how to resume.

  Args:
    data_config: `data_config.default_data_config()`-shaped block.
    batch_size: clips per batch on this host.
    num_frames: current frames per clip (the official DATA_CURR_SEQ_LEN, 3);
      a clip has T = num_frames + 2 frames.
    seed: data seed; the stream is a pure function of it.
    start_index: first global element index; `step * batch_size *
      num_shards` resumes after `step` optimizer steps.
    shard_index: this host's index, in `[0, num_shards)`.
    num_shards: number of hosts reading disjoint elements.

  Returns:
    A `tf.data.Dataset` of batches (`drop_remainder`, prefetched).

  Raises:
    ValueError: bad arguments or config.
    datasets.DatasetError: the dataset cannot be indexed.
  """
  if not 0 <= shard_index < num_shards:
    raise ValueError(f'shard_index {shard_index} not in [0, {num_shards})')
  if start_index < 0 or batch_size < 1 or num_frames < 1:
    raise ValueError('need start_index >= 0, batch_size >= 1, num_frames >= 1')
  c = data_config
  frame_sampling = c.get('frame_sampling', 'clip')
  if frame_sampling not in ('clip', 'pairs'):
    raise ValueError(
        "config.data.frame_sampling must be 'clip' or 'pairs', got "
        f'{frame_sampling!r}'
    )
  loader = _make_loader(c)
  lengths = tf.constant(loader.lengths, tf.int32)
  num_videos = len(loader.lengths)
  clip_len = num_frames + 2
  perm_key, element_key = tf.unstack(
      tf.random.experimental.stateless_split(
          tf.constant([seed, _SALT], tf.int64), 2
      )
  )

  def video_of(index):
    """Epoch-wise permutation: every video once per `num_videos` elements."""
    epoch = index // num_videos
    keys = tf.random.stateless_uniform(
        [num_videos], tf.random.experimental.stateless_fold_in(perm_key, epoch)
    )
    return tf.cast(tf.argsort(keys)[index % num_videos], tf.int32)

  def make_clip(index):
    key = tf.random.experimental.stateless_fold_in(element_key, index)
    frame_key, scale_key, crop_key, object_key, flip_key = tf.unstack(
        tf.random.experimental.stateless_split(key, 5)
    )
    video = video_of(index)
    chosen = preprocess.sample_frame_indices(
        frame_key,
        lengths[video],
        num_frames=num_frames,
        max_gap=c.max_gap,
        reverse_prob=c.reverse_prob,
        reference_tries=c.reference_tries,
        pairs=frame_sampling == 'pairs',
    )
    frames, labels = tf.numpy_function(
        loader,
        [video, chosen['reference'], chosen['sequence']],
        [tf.uint8, tf.uint8],
        stateful=False,
    )
    clip = {
        'frames': tf.ensure_shape(frames, [clip_len, None, None, 3]),
        'labels': tf.ensure_shape(labels, [clip_len, None, None]),
    }
    clip = preprocess.random_scale(
        clip,
        scale_key,
        scale_range=tuple(c.scale_range),
        short_edge=c.short_edge,
    )
    clip = preprocess.balanced_random_crop(
        clip,
        crop_key,
        crop_size=c.crop_size,
        max_tries=c.crop_max_tries,
        min_foreground=c.crop_min_foreground,
        min_object_pixels=c.min_object_pixels,
        balanced=c.balanced_crop,
    )
    clip = preprocess.select_objects(
        clip,
        object_key,
        max_objects=c.max_objects,
        min_object_pixels=c.min_object_pixels,
    )
    clip = preprocess.random_flip(clip, flip_key, prob=c.flip_prob)
    clip['index'] = index
    return clip

  global_batch = batch_size * num_shards

  def element_index(n):
    """This host's n-th element -> its global element index."""
    return (
        start_index
        + (n // batch_size) * global_batch
        + shard_index * batch_size
        + n % batch_size
    )

  ds = tf.data.Dataset.range(np.iinfo(np.int64).max).map(element_index)
  ds = ds.map(
      make_clip, num_parallel_calls=c.num_parallel_calls, deterministic=True
  )
  ds = ds.batch(batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  # Autotuning off: its model thread made deleting the iterator at the end
  # of a run wait up to a minute (measured: 52 s after a 90 s pause, e.g.
  # a long first compile; 0.0 s without it). AUTOTUNE (-1) parallelism is
  # then tf.data's default, the number of schedulable CPU cores.
  options.autotune.enabled = False
  return ds.with_options(options).prefetch(c.prefetch)

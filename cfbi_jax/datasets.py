"""Evaluation inputs: DAVIS, YouTube-VOS and the user's own videos.

Each reader returns `VideoSequence`s: a name, the frames to segment (with the
stems their output PNGs are named after), the annotated frames (the first
frame plus, for YouTube-VOS and own videos, frames where new objects first
appear) and methods that read frames as RGB arrays and annotations as
palette-index label maps. Evaluation (`evaluation.py`, the demo notebook)
walks a list of them; nothing here depends on JAX.

Layouts (`../shared/reference/cfbi-official-notes.md` §17):

* DAVIS: `root/JPEGImages/<res>/<seq>/*.jpg`, `root/Annotations/<res>/<seq>/
  <frame>.png` and a split file, `root/ImageSets/<year>/<split>.txt` (one
  name per line; DAVIS 2017, also `ImageSets/2016/` there) or DAVIS 2016's
  `root/ImageSets/<res>/<split>.txt` (lines `JPEGImages/480p/<seq>/00000.jpg
  Annotations/480p/<seq>/00000.png`). Only the first frame's mask is used.
* YouTube-VOS: `<split>/meta.json`, `<split>/JPEGImages/<seq>/<frame>.jpg`,
  `<split>/Annotations/<seq>/<frame>.png`. The frames to segment are the
  union of the objects' frame lists; each object's first listed frame is
  annotated (that PNG may hold several objects).
* Own videos: a folder of frames or a video file, plus one mask PNG for the
  first frame or a folder of PNGs named after frames, each holding the
  objects that first appear there.

Frames are returned as RGB (the official code reads BGR with OpenCV; the
channel order is the model input's concern). EXIF orientation tags are
ignored, as dataset JPEGs carry none. Every problem with the inputs raises
`DatasetError` with a message that names the file.
"""

import dataclasses
import json
import os
import re
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import av
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from cfbi_jax import masks

FRAME_EXTENSIONS = ('.jpg', '.jpeg', '.png')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm')

# A grayscale ('L') mask is accepted only when its values look like object
# ids (void 255 aside); anti-aliased masks exceed this and are rejected. A
# 0/255 binary mask is one object (`masks.with_binary_object`).
MAX_GRAYSCALE_ID = 100


class DatasetError(masks.LabelError):
  """An evaluation input is missing or malformed; the message names the file.

  A `masks.LabelError`, so that `except masks.LabelError` catches a bad
  annotation file as well as a bad mask array; `read_mask` raises this
  class for every problem with a mask, ids above `max_objects` included.
  """


def _natural_key(name: str):
  """Sort key that orders 'f2' before 'f10' (and zero-padded names as usual)."""
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]


def _listing(folder: str, extensions: Sequence[str]) -> List[str]:
  """Files in `folder` (not hidden) whose lower-cased suffix is listed."""
  return [
      f
      for f in os.listdir(folder)
      if not f.startswith('.')
      and os.path.splitext(f)[1].lower() in extensions
      and os.path.isfile(os.path.join(folder, f))
  ]


def _why(e: Exception) -> str:
  """An image-reading error without PIL's repeat of the file name."""
  if isinstance(e, UnidentifiedImageError):
    return 'not an image PIL can identify (empty, corrupt or unsupported)'
  return str(e) or type(e).__name__


def _image_size(path: str) -> Tuple[int, int]:
  """`(height, width)` from an image's header; DatasetError if unreadable."""
  try:
    with Image.open(path) as img:
      return img.height, img.width
  except FileNotFoundError:
    raise DatasetError(f'missing file: {path}') from None
  except (OSError, SyntaxError, ValueError) as e:
    raise DatasetError(f'unreadable image {path}: {_why(e)}') from None


def read_mask(
    path: str,
    expected_size: Optional[Tuple[int, int]] = None,
    max_objects: Optional[int] = None,
    binarize: bool = False,
    require_object: bool = False,
) -> np.ndarray:
  """Reads and validates an annotation PNG as object ids.

  Args:
    path: palette ('P') PNG whose indices are object ids (0 = background,
      255 = void), or a grayscale ('L') / bilevel ('1') PNG whose values
      are ids. A mask of only 0 and 255 is one object (id 1).
    expected_size: `(height, width)` of the frame the mask belongs to.
    max_objects: largest object id allowed; None for no limit.
    binarize: map every id > 0 to 1 (DAVIS 2016, single object). Grayscale
      0/255 masks are then accepted.
    require_object: raise if the mask holds no object (first frames).

  Returns:
    `[height, width]` uint8 label map; void pixels stay 255.

  Raises:
    DatasetError: the file is missing or unreadable, is colour (RGB/RGBA),
      is grayscale with non-id values, has the wrong size, has ids above
      `max_objects`, or has no object when one is required.
  """
  if not os.path.isfile(path):
    raise DatasetError(f'missing annotation file: {path}')
  try:
    with Image.open(path) as img:
      mode = img.mode
      labels = np.asarray(img) if mode in ('P', 'L', '1') else None
  except (OSError, SyntaxError, ValueError) as e:
    raise DatasetError(f'unreadable annotation {path}: {_why(e)}') from None
  if mode in ('RGB', 'RGBA', 'LA', 'PA', 'CMYK'):
    raise DatasetError(
        f'annotation {path} is a colour ({mode}) image; masks must be '
        'palette (mode "P") PNGs whose pixel values are object ids '
        '(0 = background, 1..N = objects). Save them as indexed/palette '
        'PNGs, e.g. cfbi_jax.output_files.write_palette_png.'
    )
  if labels is None:
    raise DatasetError(
        f'annotation {path} has unsupported image mode {mode!r};'
        ' save it as a palette (mode "P") PNG of object ids'
    )
  labels = labels.astype(np.uint8)
  if not binarize:
    labels = masks.with_binary_object(labels)
  top = masks.largest_object_id(labels)
  if mode == 'L' and not binarize and top > MAX_GRAYSCALE_ID:
    raise DatasetError(
        f'annotation {path} is a grayscale image with values up to '
        f'{top}; pixel values must be object ids (0 = background, '
        '1..N, 255 = void), or 0/255 for one object. Anti-aliased masks '
        'must be thresholded first.'
    )
  if expected_size is not None and labels.shape != tuple(expected_size):
    raise DatasetError(
        f'annotation {path} is {labels.shape[1]}x{labels.shape[0]} (WxH) but '
        f'its frame is {expected_size[1]}x{expected_size[0]}'
    )
  if binarize:
    labels = (labels > 0).astype(np.uint8)
  if max_objects is not None:
    try:
      masks.ids_above(labels, max_objects, f'annotation {path}')
    except masks.LabelError as e:
      raise DatasetError(str(e)) from None
  if require_object and not masks.largest_object_id(labels):
    raise DatasetError(
        f'first-frame annotation {path} contains no object '
        '(all pixels are 0)'
    )
  return labels


def _decode_video(path: str) -> Iterator[av.VideoFrame]:
  """Decoded frames of the first video stream; the file closes when done."""
  try:
    container = av.open(path)
  except (av.FFmpegError, OSError) as e:
    raise DatasetError(f'unreadable video {path}: {e}') from None
  with container:
    if not container.streams.video:
      raise DatasetError(f'{path} has no video stream')
    stream = container.streams.video[0]
    stream.thread_type = 'AUTO'
    try:
      yield from container.decode(stream)
    except av.FFmpegError as e:
      raise DatasetError(f'error decoding video {path}: {e}') from None


def _probe_video(path: str) -> Tuple[int, Tuple[int, int]]:
  """Counts frames by decoding (container counts are unreliable); size too."""
  count, size = 0, None
  for frame in _decode_video(path):
    if size is None:
      size = (frame.height, frame.width)
    count += 1
  if not count:
    raise DatasetError(f'video {path} has no frames')
  return count, size


@dataclasses.dataclass
class VideoSequence:
  """One video to segment, read lazily.

  Exactly one of `frame_paths` and `video_path` is set.

  Attributes:
    name: sequence name (the output folder).
    frame_names: output stems of the frames to segment, in order ('00000').
    annotated: frame index -> annotation PNG path. Always holds index 0;
      later entries are frames where new objects first appear.
    frame_paths: image file of each frame (frame-folder sources).
    video_path: video file (PyAV sources); frame i is the i-th decoded frame.
    binarize: map object ids > 0 to 1 when reading annotations (DAVIS 2016).
    max_objects: largest object id allowed in annotations, None for any.
    frame_size: `(height, width)` of the frames; filled in on first need.
  """

  name: str
  frame_names: List[str]
  annotated: Dict[int, str]
  frame_paths: Optional[List[str]] = None
  video_path: Optional[str] = None
  binarize: bool = False
  max_objects: Optional[int] = None
  frame_size: Optional[Tuple[int, int]] = None
  # Video sources: (decoder generator, index of the next frame it yields),
  # so that increasing `load_frame` calls decode each frame once.
  _cursor: Optional[Tuple[Iterator[av.VideoFrame], int]] = dataclasses.field(
      default=None, init=False, repr=False, compare=False
  )

  def __len__(self) -> int:
    return len(self.frame_names)

  def size(self) -> Tuple[int, int]:
    """`(height, width)` of the frames (of the first, without decoding
    it; `validate` checks that the others agree)."""
    return self._size_of(0)

  def _size_of(self, i: int) -> Tuple[int, int]:
    """`(height, width)` of frame `i` without decoding it."""
    if self.frame_paths is not None:
      return _image_size(self.frame_paths[i])
    if self.frame_size is None:
      _, self.frame_size = _probe_video(self.video_path)
    return self.frame_size

  def load_frame(self, i: int) -> np.ndarray:
    """Frame `i` as `[height, width, 3]` uint8 RGB.

    For video files, calls with increasing `i` continue one decoder; a
    smaller `i` restarts decoding from the first frame. Use `iter_frames`
    for a plain pass.

    Raises:
      DatasetError: the frame cannot be read or decoded.
    """
    if not 0 <= i < len(self):
      raise IndexError(f'{self.name}: frame {i} of {len(self)}')
    if self.frame_paths is not None:
      return _read_rgb(self.frame_paths[i])
    if self._cursor is None or self._cursor[1] > i:
      self._cursor = (_decode_video(self.video_path), 0)
    frames, next_index = self._cursor
    try:
      while True:
        frame = next(frames)
        next_index += 1
        if next_index > i:
          break
    except StopIteration:
      self._cursor = None
      raise DatasetError(
          f'video {self.video_path} ended after {next_index} '
          f'frames; frame {i} was requested'
      ) from None
    except DatasetError:
      self._cursor = None
      raise
    self._cursor = (frames, next_index)
    return frame.to_ndarray(format='rgb24')

  def iter_frames(self) -> Iterator[Tuple[int, str, np.ndarray]]:
    """Yields `(index, frame name, [H, W, 3] uint8 RGB)` in order.

    Holds one frame in memory at a time, for every source.
    """
    if self.frame_paths is not None:
      for i, path in enumerate(self.frame_paths):
        yield i, self.frame_names[i], _read_rgb(path)
      return
    count = 0
    for i, frame in enumerate(_decode_video(self.video_path)):
      if i >= len(self):
        break
      count += 1
      yield i, self.frame_names[i], frame.to_ndarray(format='rgb24')
    if count < len(self):
      raise DatasetError(
          f'video {self.video_path} ended after {count} '
          f'frames; {len(self)} were expected'
      )

  def frame_rate(self) -> Optional[float]:
    """The video file's frame rate (frames per second), or None for a
    folder of frames or a file that does not say."""
    if self.video_path is None:
      return None
    try:
      with av.open(self.video_path) as container:
        rate = container.streams.video[0].average_rate
    except (av.FFmpegError, OSError, IndexError):
      return None
    return float(rate) if rate else None

  def load_annotation(self, i: int) -> Optional[np.ndarray]:
    """The annotation of frame `i` as `[H, W]` uint8 ids, or None if none.

    The mask is checked against frame `i`'s size, `max_objects`, and (for
    frame 0) holding at least one object.

    Raises:
      DatasetError: see `read_mask`.
    """
    path = self.annotated.get(i)
    if path is None:
      return None
    return read_mask(
        path,
        expected_size=self._size_of(i),
        max_objects=self.max_objects,
        binarize=self.binarize,
        require_object=(i == 0),
    )

  def validate(self) -> None:
    """Checks the sequence without decoding every frame.

    Reads every frame header (folders) or, unless `frame_size` is already
    known, decodes the video once to count its frames; then reads every
    annotation.

    Raises:
      DatasetError: listing unreadable frames or frames of a different size,
        or the first bad annotation.
    """
    if not self.frame_names:
      raise DatasetError(f'{self.name}: no frames')
    if 0 not in self.annotated:
      raise DatasetError(
          f'{self.name}: the first frame '
          f'({self.frame_names[0]}) has no annotation'
      )
    bad = [i for i in self.annotated if not 0 <= i < len(self)]
    if bad:
      raise DatasetError(
          f'{self.name}: annotations for frames {bad} outside '
          f'0..{len(self) - 1}'
      )
    if self.frame_paths is not None:
      problems, sizes = [], {}
      for path in self.frame_paths:
        try:
          sizes[path] = _image_size(path)
        except DatasetError as e:
          problems.append(str(e))
      if problems:
        raise DatasetError(
            f'{self.name}: {len(problems)} frame(s) missing or '
            'unreadable:\n  ' + '\n  '.join(problems)
        )
      first = sizes[self.frame_paths[0]]
      odd = [p for p, s in sizes.items() if s != first]
      if odd:
        raise DatasetError(
            f'{self.name}: frames differ in size from {self.frame_paths[0]} '
            f'({first[1]}x{first[0]}): ' + ', '.join(odd)
        )
      self.frame_size = first
    elif self.frame_size is None:
      # A known size means the frames were counted when the sequence was
      # made (`own_video_sequence`); decoding the whole video again is slow.
      count, self.frame_size = _probe_video(self.video_path)
      if count != len(self):
        raise DatasetError(
            f'video {self.video_path} has {count} frames, '
            f'expected {len(self)}'
        )
    for i in sorted(self.annotated):
      self.load_annotation(i)


def _read_rgb(path: str) -> np.ndarray:
  """Decodes an image file to `[H, W, 3]` uint8 RGB; DatasetError naming it."""
  try:
    with Image.open(path) as img:
      return np.asarray(img.convert('RGB'))
  except FileNotFoundError:
    raise DatasetError(f'missing frame: {path}') from None
  except (OSError, SyntaxError, ValueError) as e:
    raise DatasetError(f'unreadable frame {path}: {_why(e)}') from None


def _finish(
    sequences: List[VideoSequence], validate: bool
) -> List[VideoSequence]:
  if validate:
    for seq in sequences:
      seq.validate()
  return sequences


def _require_dir(path: str, what: str) -> None:
  if not os.path.isdir(path):
    raise DatasetError(f'missing {what}: {path}')


def _davis_split_names(
    root: str, split: str, year: int, resolution: str
) -> List[str]:
  """Sequence names of a DAVIS split file, de-duplicated and sorted."""
  candidates = [os.path.join(root, 'ImageSets', str(year), f'{split}.txt')]
  if year == 2016:
    candidates.append(
        os.path.join(root, 'ImageSets', resolution, f'{split}.txt')
    )
  path = next((p for p in candidates if os.path.isfile(p)), None)
  if path is None:
    raise DatasetError('missing DAVIS split file: ' + ' or '.join(candidates))
  names = set()
  with open(path) as f:
    for line in f:
      tokens = line.split()
      if not tokens:
        continue
      # DAVIS 2016 lists frame/mask path pairs; the folder is the sequence.
      parts = tokens[0].strip('/').split('/')
      names.add(parts[-2] if len(parts) > 1 else parts[0])
  if not names:
    raise DatasetError(f'DAVIS split file {path} lists no sequences')
  return sorted(names)


def davis_sequences(
    root: str,
    split: str = 'val',
    year: int = 2017,
    resolution: str = '480p',
    single_object: bool = False,
    max_objects: Optional[int] = None,
    validate: bool = True,
) -> List[VideoSequence]:
  """Sequences of a DAVIS split (val, test-dev, ...), in name order.

  Frames are the sorted `*.jpg` files of `JPEGImages/<resolution>/<seq>`,
  and only the first frame's mask (`Annotations/<resolution>/<seq>/
  <first frame>.png`) is used, as in the official evaluation.

  Args:
    root: DAVIS folder (holding `ImageSets`, `JPEGImages`, `Annotations`).
    split: split file name without `.txt`.
    year: 2017 (`ImageSets/2017`) or 2016 (`ImageSets/2016`, else DAVIS
      2016's own `ImageSets/<resolution>`).
    resolution: '480p', 'Full-Resolution' (2017) or '1080p' (2016).
    single_object: binarise masks (ids > 0 -> 1); use for DAVIS 2016.
    max_objects: largest object id allowed, None for any.
    validate: run `VideoSequence.validate` on every sequence (reads frame
      headers and first masks).

  Returns:
    One `VideoSequence` per listed sequence.

  Raises:
    DatasetError: missing split file, sequence folder, frames or mask, or a
      bad mask.
  """
  names = _davis_split_names(root, split, year, resolution)
  image_root = os.path.join(root, 'JPEGImages', resolution)
  mask_root = os.path.join(root, 'Annotations', resolution)
  missing = [
      os.path.join(image_root, n)
      for n in names
      if not os.path.isdir(os.path.join(image_root, n))
  ]
  if missing:
    raise DatasetError(
        'missing DAVIS sequence folder(s): ' + ', '.join(missing)
    )
  sequences = []
  for name in names:
    folder = os.path.join(image_root, name)
    files = sorted(_listing(folder, ('.jpg', '.jpeg')))
    if not files:
      raise DatasetError(f'no .jpg frames in {folder}')
    stems = [os.path.splitext(f)[0] for f in files]
    sequences.append(
        VideoSequence(
            name=name,
            frame_names=stems,
            annotated={0: os.path.join(mask_root, name, stems[0] + '.png')},
            frame_paths=[os.path.join(folder, f) for f in files],
            binarize=single_object,
            max_objects=max_objects,
        )
    )
  return _finish(sequences, validate)


def read_youtube_vos_meta(
    root: str, split: str
) -> Tuple[str, Dict[str, Dict[str, List[str]]]]:
  """Finds and reads the `meta.json` of a YouTube-VOS split.

  The one reader of the file, for evaluation (`youtube_vos_sequences`) and
  training (`input_pipeline.youtube_vos_train_videos`). The file must have
  the release's structure, `{"videos": {<video>: {"objects": {<id>:
  {"frames": [<frame stem>, ...], ...}}}}}`; other keys are ignored.

  Args:
    root: the split folder (holding `meta.json`, `JPEGImages`,
      `Annotations`) or its parent (then `root/<split>` is used).
    split: split folder name, used when `root` is the parent.

  Returns:
    `(split folder, videos)`: `videos` maps each video name, in name order,
    to its objects' frame stems (object id -> frames as listed).

  Raises:
    DatasetError: `meta.json` is in neither folder, cannot be read, is not
      JSON, or lacks the structure above.
  """
  if not os.path.isfile(os.path.join(root, 'meta.json')):
    if not os.path.isfile(os.path.join(root, split, 'meta.json')):
      raise DatasetError(
          'missing YouTube-VOS meta.json: neither '
          f'{os.path.join(root, "meta.json")} nor '
          f'{os.path.join(root, split, "meta.json")} exists; pass the split '
          'folder or its parent as the root'
      )
    root = os.path.join(root, split)
  path = os.path.join(root, 'meta.json')
  try:
    with open(path, encoding='utf-8') as f:
      meta = json.load(f)
  except OSError as e:
    raise DatasetError(
        f'unreadable YouTube-VOS meta file {path}: ' f'{e.strerror or e}'
    ) from None
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise DatasetError(
        f'YouTube-VOS meta file {path} is not valid JSON '
        f'({e}); download or extract it again'
    ) from None

  def malformed(what: str) -> DatasetError:
    return DatasetError(
        f'malformed YouTube-VOS meta file {path}: {what}; '
        "use the release's meta.json of the split"
    )

  videos = meta.get('videos') if isinstance(meta, dict) else None
  if not isinstance(videos, dict):
    raise malformed('no "videos" object at the top level')
  out = {}
  for name in sorted(videos):
    objects = (
        videos[name].get('objects') if isinstance(videos[name], dict) else None
    )
    if not isinstance(objects, dict):
      raise malformed(f'video {name} has no "objects" object')
    out[name] = {}
    for obj_id, obj in objects.items():
      frames = obj.get('frames') if isinstance(obj, dict) else None
      if not isinstance(frames, list) or not all(
          isinstance(fr, str) for fr in frames
      ):
        raise malformed(
            f'object {obj_id} of video {name} has no "frames" '
            'list of frame names'
        )
      out[name][obj_id] = frames
  return root, out


def youtube_vos_sequences(
    root: str,
    split: str = 'valid',
    max_objects: Optional[int] = None,
    validate: bool = True,
) -> List[VideoSequence]:
  """Sequences of a YouTube-VOS split (valid / test), in name order.

  The frames to segment (and write) are the sorted union of the objects'
  `frames` in `meta.json`; other JPEGs in the folder are ignored. Each
  object's first frame is annotated; its PNG may hold several objects.

  Args:
    root: the split folder (holding `meta.json`, `JPEGImages`,
      `Annotations`) or its parent (then `root/<split>` is used).
    split: split folder name, used when `root` is the parent.
    max_objects: largest object id allowed, None for any.
    validate: run `VideoSequence.validate` on every sequence (reads frame
      headers and annotations).

  Returns:
    One `VideoSequence` per video of `meta.json`.

  Raises:
    DatasetError: missing or malformed `meta.json`, missing sequence
      folder, frames or annotation files, or a bad annotation.
  """
  root, videos = read_youtube_vos_meta(root, split)
  meta_path = os.path.join(root, 'meta.json')
  sequences = []
  for name, objects in videos.items():
    first_frames = {min(frames) for frames in objects.values() if frames}
    frames = sorted(
        {fr for obj_frames in objects.values() for fr in obj_frames}
    )
    if not frames:
      raise DatasetError(f'{meta_path}: video {name} lists no frames')
    folder = os.path.join(root, 'JPEGImages', name)
    _require_dir(folder, 'YouTube-VOS sequence folder')
    paths = [os.path.join(folder, fr + '.jpg') for fr in frames]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise DatasetError(
          f'{name}: {len(missing)} frame(s) listed in '
          f'{meta_path} are missing: ' + ', '.join(missing)
      )
    annotated = {
        frames.index(fr): os.path.join(root, 'Annotations', name, fr + '.png')
        for fr in sorted(first_frames)
    }
    missing = [p for p in annotated.values() if not os.path.isfile(p)]
    if missing:
      raise DatasetError(
          f'{name}: missing annotation file(s) for the first '
          'frame of an object: ' + ', '.join(missing)
      )
    sequences.append(
        VideoSequence(
            name=name,
            frame_names=frames,
            annotated=annotated,
            frame_paths=paths,
            max_objects=max_objects,
        )
    )
  return _finish(sequences, validate)


def own_video_sequence(
    video: str,
    masks: str,
    name: Optional[str] = None,
    max_objects: Optional[int] = None,
    validate: bool = True,
) -> VideoSequence:
  """A user's video with first-frame (and new-object) masks.

  Args:
    video: a folder of frames (.jpg/.jpeg/.png, in natural name order, so
      'f2' precedes 'f10') or a video file (.mp4/.avi/.mov/.mkv/.webm, read
      with PyAV; frames are named '00000', '00001', ...). A video file is
      decoded once here to count its frames.
    masks: one PNG (the first frame's mask) or a folder of PNGs named after
      frames: the frame's stem, or for video files the frame index
      ('00000.png'; any zero padding). Each PNG holds the objects that
      first appear in its frame; the first frame must have one.
    name: sequence name; defaults to the folder or file stem of `video`.
    max_objects: largest object id allowed, None for any.
    validate: run `VideoSequence.validate` (frame headers, masks).

  Returns:
    The sequence.

  Raises:
    DatasetError: missing or empty inputs, masks that name no frame, a
      missing first-frame mask, or a bad mask or frame.
  """
  video = os.path.normpath(video)
  if name is None:
    name = os.path.splitext(os.path.basename(video))[0]
  if os.path.isdir(video):
    files = sorted(_listing(video, FRAME_EXTENSIONS), key=_natural_key)
    if not files:
      raise DatasetError(f'no frames ({"/".join(FRAME_EXTENSIONS)}) in {video}')
    stems = [os.path.splitext(f)[0] for f in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
      raise DatasetError(f'{video}: several frames share the stems {dupes}')
    seq = VideoSequence(
        name=name,
        frame_names=stems,
        annotated={},
        frame_paths=[os.path.join(video, f) for f in files],
        max_objects=max_objects,
    )
  elif os.path.isfile(video):
    if os.path.splitext(video)[1].lower() not in VIDEO_EXTENSIONS:
      raise DatasetError(
          f'{video}: not a frame folder or a video file '
          f'({"/".join(VIDEO_EXTENSIONS)})'
      )
    count, size = _probe_video(video)
    width = max(5, len(str(count - 1)))
    seq = VideoSequence(
        name=name,
        frame_names=[f'{i:0{width}d}' for i in range(count)],
        annotated={},
        video_path=video,
        max_objects=max_objects,
        frame_size=size,
    )
  else:
    raise DatasetError(f'missing video or frame folder: {video}')

  if os.path.isfile(masks):
    seq.annotated = {0: masks}
  elif os.path.isdir(masks):
    mask_files = sorted(_listing(masks, ('.png',)))
    if not mask_files:
      raise DatasetError(f'no .png masks in {masks}')
    index = {stem: i for i, stem in enumerate(seq.frame_names)}
    unmatched = []
    for f in mask_files:
      stem = os.path.splitext(f)[0]
      if stem in index:
        i = index[stem]
      elif (
          seq.video_path is not None and stem.isdigit() and int(stem) < len(seq)
      ):
        i = int(stem)
      else:
        unmatched.append(f)
        continue
      if i in seq.annotated:
        raise DatasetError(
            f'masks {seq.annotated[i]} and {f} both belong '
            f'to frame {seq.frame_names[i]}'
        )
      seq.annotated[i] = os.path.join(masks, f)
    if unmatched:
      raise DatasetError(
          f'masks in {masks} name no frame of {video}: ' + ', '.join(unmatched)
      )
    if 0 not in seq.annotated:
      raise DatasetError(
          f'no mask for the first frame ({seq.frame_names[0]}) '
          f'in {masks}; expected {seq.frame_names[0]}.png'
      )
  else:
    raise DatasetError(f'missing mask file or folder: {masks}')
  return _finish([seq], validate)[0]

"""Label-map conventions: object ids, void, the object limit, the palette.

A mask (label map) is an `[H, W]` integer array: 0 is the background,
1..K the objects and `VOID_ID` (255) void pixels, which are no object and
are left out of the reference features and of J&F. This module holds
those conventions and the small checks built on them, so that the dataset
readers (`datasets`), the output writers (`output_files`), the streaming
`Session` and the per-frame contract (`vos`) agree on them. It needs
only NumPy: importing it pulls in no image, video or accelerator library.
"""

import numpy as np

# Void pixels, as the DAVIS tools and many VOS datasets write them: not an
# object, left out of the reference features and of J&F.
VOID_ID = 255
# The largest object id a mask may hold unless told otherwise.
MAX_OBJECTS = 10


class LabelError(ValueError):
  """A mask breaks the label conventions; the message says which mask."""


def with_binary_object(labels: np.ndarray) -> np.ndarray:
  """A 0/255 binary mask -> one object (1); any other mask unchanged.

  Args:
    labels: `[H, W]` integer mask.

  Returns:
    `[H, W]` uint8: `labels == 255` as 0/1 when the mask holds only 0 and
    255 (and some 255), else `labels` (where 255 is then void).
  """
  labels = np.asarray(labels)
  if (
      labels.size
      and labels.max() == VOID_ID
      and not np.any((labels != 0) & (labels != VOID_ID))
  ):
    return (labels == VOID_ID).astype(np.uint8)
  return labels.astype(np.uint8)


def largest_object_id(labels: np.ndarray) -> int:
  """The largest object id of a mask, void (255) left out; 0 if none."""
  labels = np.asarray(labels)
  ids = labels[labels != VOID_ID]
  return int(ids.max()) if ids.size else 0


def ids_above(labels: np.ndarray, max_objects: int, where: str) -> None:
  """Raises `LabelError` if `labels` holds object ids above `max_objects`.

  Args:
    labels: `[H, W]` mask (void 255 allowed).
    max_objects: the run's object capacity.
    where: what the mask is, for the message (a path, 'mask of frame 3').

  Raises:
    LabelError: naming `where`, the ids above `max_objects` and the
      setting that allows them.
  """
  if largest_object_id(labels) <= max_objects:
    return
  ids = sorted(int(v) for v in np.unique(labels) if max_objects < v != VOID_ID)
  raise LabelError(
      f'{where} has object ids {ids} above max_objects='
      f'{max_objects}; raise it with --config.max_objects='
      f'{ids[-1]} (or max_objects={ids[-1]} in Python)'
  )


def _davis_palette() -> np.ndarray:
  """The PASCAL VOC / DAVIS colour map: the index's bits spread over RGB.

  Bits 0, 1, 2 of the index set the top bit of R, G, B; bits 3, 4, 5 the
  next bit down; and so on.

  Returns:
    `[256, 3]` uint8 array; entry 1 is (128, 0, 0), entry 255 (224, 224, 192).
  """
  palette = np.zeros((256, 3), np.uint8)
  for index in range(256):
    c, rgb = index, [0, 0, 0]
    for bit in range(8):
      for channel in range(3):
        rgb[channel] |= ((c >> channel) & 1) << (7 - bit)
      c >>= 3
    palette[index] = rgb
  return palette


# The colours of palette PNGs (pixel value = object id), as DAVIS and
# YouTube-VOS annotations and results use them.
DAVIS_PALETTE = _davis_palette()

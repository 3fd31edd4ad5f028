r"""DAVIS 2017 semi-supervised scorer: J&F of a folder of predicted masks.

A drop-in for the official tool's `evaluation_method.py`
(github.com/davisvideochallenge/davis2017-evaluation @ ac7c43f), with the
same flags, console tables and CSV files:

  python -m cfbi_jax.davis_eval --davis_path /data/DAVIS \
      --results_path /tmp/preds --set val --task semi-supervised

* Sequences come from `<davis_path>/ImageSets/<year>/<set>.txt`, the ground
  truth from `<davis_path>/Annotations/480p/<seq>/*.png` (sorted file names),
  the predictions from `<results_path>/<seq>/<frame>.png` for the evaluated
  frames 1..T-2 only. Masks are palette ("P") PNGs read as palette indices
  with PIL, never as RGB colours.
* It writes `global_results-<set>.csv` and `per-sequence_results-<set>.csv`
  into `results_path`, byte-identical to the official ones, and prints the
  official tables.

Deliberate differences from the official script: existing CSVs are
recomputed and replaced (the official one reprints stale files), the CSVs are
written atomically (temporary file + `os.replace`), and a missing, wrongly
sized or non-palette prediction, or a predicted label above the sequence's
object count, is an error naming the file or frame instead of a crash or a
silent exit. Only the semi-supervised task is implemented.

`evaluate_davis` is the library entry point (used by `main` and by the
evaluation driver); `format_results` renders its console tables. The metric
itself lives in `cfbi_jax.metrics`.
"""

import argparse
import glob
import os
import re
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from cfbi_jax import metrics

GLOBAL_COLUMNS = (
    'J&F-Mean',
    'J-Mean',
    'J-Recall',
    'J-Decay',
    'F-Mean',
    'F-Recall',
    'F-Decay',
)
PER_SEQUENCE_COLUMNS = ('Sequence', 'J-Mean', 'F-Mean')
SEMI_SUPERVISED = 'semi-supervised'


class DavisEvalError(ValueError):
  """Bad input to the scorer: missing or malformed files, wrong labels."""


def global_csv_name(split: str) -> str:
  """File name of the global results CSV, as the official tool names it."""
  return f'global_results-{split}.csv'


def per_sequence_csv_name(split: str) -> str:
  """File name of the per-object results CSV, as the official tool names it."""
  return f'per-sequence_results-{split}.csv'


def read_split(davis_path: str, split: str, year: str = '2017') -> List[str]:
  """Sequence names of a split file, in file order.

  Args:
    davis_path: DAVIS root folder.
    split: split name (`val`, `train`, `test-dev`, ...).
    year: ImageSets sub-folder.

  Returns:
    The non-empty, stripped lines of
    `<davis_path>/ImageSets/<year>/<split>.txt`.

  Raises:
    DavisEvalError: if the file is missing or lists no sequence.
  """
  path = os.path.join(davis_path, 'ImageSets', year, f'{split}.txt')
  if not os.path.isfile(path):
    raise DavisEvalError(f'split file not found: {path}')
  with open(path) as fh:
    names = [line.strip() for line in fh if line.strip()]
  if not names:
    raise DavisEvalError(f'split file lists no sequence: {path}')
  return names


def read_label_png(
    path: str, *, what: str, modes: Tuple[str, ...] = ('P',)
) -> np.ndarray:
  """Reads an indexed PNG as its `[H, W]` uint8 palette indices.

  Args:
    path: the PNG file.
    what: 'prediction' or 'ground-truth', for error messages.
    modes: accepted PIL modes (`P`; `L` also gives label values directly).

  Returns:
    `[H, W]` uint8 label map.

  Raises:
    DavisEvalError: if the file is missing, unreadable or of another mode
      (an RGB image would give colours, not object ids).
  """
  if not os.path.isfile(path):
    raise DavisEvalError(f'missing {what} file: {path}')
  try:
    with Image.open(path) as im:
      mode = im.mode
      if mode not in modes:
        raise DavisEvalError(
            f'{what} file {path} has PIL mode {mode!r}; expected an indexed '
            f'(palette) PNG, mode {" or ".join(map(repr, modes))}, whose '
            'pixel values are object ids'
        )
      labels = np.array(im)
  except DavisEvalError:
    raise
  except OSError as e:
    raise DavisEvalError(f'cannot read {what} file {path}: {e}') from e
  return labels.astype(np.uint8, copy=False)


def load_ground_truth(
    davis_path: str, sequence: str, resolution: str = '480p'
) -> Tuple[List[str], np.ndarray]:
  """All ground-truth label maps of a sequence.

  Args:
    davis_path: DAVIS root folder.
    sequence: sequence name.
    resolution: Annotations / JPEGImages sub-folder.

  Returns:
    `(frame_names, labels)`: the `[T]` sorted PNG file stems and the
    `[T, H, W]` uint8 label maps.

  Raises:
    DavisEvalError: if there is no annotation, frame sizes differ, or the
      JPEG folder exists with a different number of frames (the official
      tool requires one image per annotation).
  """
  folder = os.path.join(davis_path, 'Annotations', resolution, sequence)
  paths = sorted(glob.glob(os.path.join(folder, '*.png')))
  if not paths:
    raise DavisEvalError(
        f'no ground-truth PNG for sequence {sequence!r} in ' f'{folder}'
    )
  image_folder = os.path.join(davis_path, 'JPEGImages', resolution, sequence)
  if os.path.isdir(image_folder):
    num_images = len(glob.glob(os.path.join(image_folder, '*.jpg')))
    if num_images != len(paths):
      raise DavisEvalError(
          f'sequence {sequence!r}: {num_images} JPEG frames in '
          f'{image_folder} but {len(paths)} annotations in {folder}'
      )
  labels = [
      read_label_png(p, what='ground-truth', modes=('P', 'L')) for p in paths
  ]
  for p, lab in zip(paths, labels):
    if lab.shape != labels[0].shape:
      raise DavisEvalError(
          f'ground-truth file {p} is {lab.shape}, the first '
          f'frame of {sequence!r} is {labels[0].shape}'
      )
  names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  return names, np.stack(labels)


def load_predictions(
    results_path: str,
    sequence: str,
    frame_names: Sequence[str],
    shape: Tuple[int, int],
) -> np.ndarray:
  """Predicted label maps of the evaluated frames of a sequence.

  Args:
    results_path: folder with one sub-folder of PNGs per sequence.
    sequence: sequence name.
    frame_names: `[T]` frame names of the ground truth.
    shape: `(H, W)` of the ground truth.

  Returns:
    `[T, H, W]` uint8 label maps; frames 0 and T-1 are not read (zeros),
    as the official tool does not read them either.

  Raises:
    DavisEvalError: if a prediction is missing, not a palette PNG, or not
      `H x W`.
  """
  t = len(frame_names)
  pred = np.zeros((t, *shape), np.uint8)
  for i in range(1, t - 1):
    path = os.path.join(results_path, sequence, f'{frame_names[i]}.png')
    labels = read_label_png(path, what='prediction')
    if labels.shape != tuple(shape):
      raise DavisEvalError(
          f'prediction file {path} is {labels.shape[1]}x{labels.shape[0]} '
          f'(WxH); the ground truth is {shape[1]}x{shape[0]}'
      )
    pred[i] = labels
  return pred


def evaluate_davis(
    davis_path: str,
    results_path: str,
    split: str = 'val',
    *,
    year: str = '2017',
    resolution: str = '480p',
    task: str = SEMI_SUPERVISED,
) -> Dict[str, Any]:
  """Scores a folder of predictions on a DAVIS split (official J&F).

  Every object of every sequence has equal weight in the global numbers, and
  J&F-Mean = (J-Mean + F-Mean) / 2, as in the official tool. Nothing is
  written; see `write_results_csvs`.

  Args:
    davis_path: DAVIS root (`ImageSets/`, `Annotations/`, `JPEGImages/`).
    results_path: predictions, `<results_path>/<seq>/<frame>.png`.
    split: split file name without `.txt`.
    year: ImageSets sub-folder.
    resolution: Annotations sub-folder.
    task: must be 'semi-supervised'.

  Returns:
    A dict with
    * `global`: {column: float} for `GLOBAL_COLUMNS`;
    * `per_object`: one dict per object in CSV order, with `Sequence`
      (`<seq>_<k>`), `sequence`, `object_id` and the six J/F statistics;
    * `per_frame`: {seq: {'frames': [names], 'J': {'k': [...]}, 'F': ...}};
    * `sequences`: one dict per sequence (name, height, width, n_frames,
      n_objects, n_evaluated_frames, first/last_evaluated,
      boundary_tolerance_px).

  Raises:
    DavisEvalError: for another task, a missing split file, missing or
      malformed masks, or a predicted label above the object count.
  """
  if task != SEMI_SUPERVISED:
    raise DavisEvalError(
        f'only the {SEMI_SUPERVISED!r} task is supported, ' f'got {task!r}'
    )
  per_object, per_frame, sequences = [], {}, []
  for seq in read_split(davis_path, split, year):
    names, gt = load_ground_truth(davis_path, seq, resolution)
    if len(names) < 3:
      raise DavisEvalError(
          f'sequence {seq!r} has {len(names)} annotated '
          'frames; the first and last are not evaluated, so '
          'at least 3 are needed'
      )
    pred = load_predictions(results_path, seq, names, gt.shape[1:])
    try:
      res = metrics.evaluate_sequence(gt, pred, sequence=seq, frame_names=names)
    except ValueError as e:
      raise DavisEvalError(
          f'{e} (predictions in {os.path.join(results_path, seq)})'
      ) from e
    k_count = res['num_objects']
    for k in range(k_count):
      row = {'Sequence': f'{seq}_{k + 1}', 'sequence': seq, 'object_id': k + 1}
      for m in ('J', 'F'):
        for stat in metrics.STATISTICS:
          row[f'{m}-{stat}'] = float(res[f'{m}-{stat}'][k])
      per_object.append(row)
    per_frame[seq] = {
        'frames': res['frames'],
        'J': {str(k + 1): res['J'][k].tolist() for k in range(k_count)},
        'F': {str(k + 1): res['F'][k].tolist() for k in range(k_count)},
    }
    h, w = gt.shape[1:]
    sequences.append(
        {
            'name': seq,
            'height': h,
            'width': w,
            'n_frames': len(names),
            'n_objects': k_count,
            'n_evaluated_frames': len(names) - 2,
            'first_evaluated': names[1],
            'last_evaluated': names[-2],
            'boundary_tolerance_px': float(metrics.boundary_radius(h, w)),
        }
    )

  glob_res = {}
  for col in GLOBAL_COLUMNS[1:]:
    glob_res[col] = float(np.mean([row[col] for row in per_object]))
  glob_res['J&F-Mean'] = (glob_res['J-Mean'] + glob_res['F-Mean']) / 2
  return {
      'global': {c: glob_res[c] for c in GLOBAL_COLUMNS},
      'per_object': per_object,
      'per_frame': per_frame,
      'sequences': sequences,
  }


def global_csv(results: Dict[str, Any]) -> str:
  """The official `global_results-<set>.csv` text (`%.3f`, `\\n` endings)."""
  values = ','.join('%.3f' % results['global'][c] for c in GLOBAL_COLUMNS)
  return ','.join(GLOBAL_COLUMNS) + '\n' + values + '\n'


def per_sequence_csv(results: Dict[str, Any]) -> str:
  """The official `per-sequence_results-<set>.csv` text: one row per object."""
  lines = [','.join(PER_SEQUENCE_COLUMNS)]
  for row in results['per_object']:
    lines.append(
        '%s,%.3f,%.3f' % (row['Sequence'], row['J-Mean'], row['F-Mean'])
    )
  return '\n'.join(lines) + '\n'


def write_results_csvs(
    results: Dict[str, Any], results_path: str, split: str = 'val'
) -> Tuple[str, str]:
  """Writes both official CSVs into `results_path`, replacing old ones.

  Each file is written to a temporary file in the same folder and moved into
  place with `os.replace`, so a reader never sees a half-written CSV.

  Args:
    results: output of `evaluate_davis`.
    results_path: destination folder (the predictions folder, as in the
      official tool).
    split: split name used in the file names.

  Returns:
    `(global_path, per_sequence_path)`.
  """
  global_path = os.path.join(results_path, global_csv_name(split))
  per_seq_path = os.path.join(results_path, per_sequence_csv_name(split))
  _write_atomic(global_path, global_csv(results))
  _write_atomic(per_seq_path, per_sequence_csv(results))
  return global_path, per_seq_path


def _write_atomic(path: str, text: str) -> None:
  folder, base = os.path.split(os.path.abspath(path))
  tmp = os.path.join(folder, f'.{base}.{os.getpid()}.tmp')
  try:
    with open(tmp, 'w', encoding='utf-8', newline='\n') as fh:
      fh.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def format_results(results: Dict[str, Any], split: str = 'val') -> str:
  """The two console tables of the official tool, as one string.

  The official script prints pandas `DataFrame.to_string(index=False)`;
  `_format_table` reproduces that layout (6 significant decimals, common
  trailing zeros trimmed, right-justified columns).

  Args:
    results: output of `evaluate_davis`.
    split: split name shown in the titles.

  Returns:
    The text from the global-results title to the last per-object row,
    ending with a newline.
  """
  g = results['global']
  table_g = _format_table([(c, [g[c]]) for c in GLOBAL_COLUMNS])
  rows = results['per_object']
  table_s = _format_table(
      [
          ('Sequence', [r['Sequence'] for r in rows]),
          ('J-Mean', [r['J-Mean'] for r in rows]),
          ('F-Mean', [r['F-Mean'] for r in rows]),
      ]
  )
  return (
      f'--------------------------- Global results for {split} '
      f'---------------------------\n{table_g}\n'
      f'\n---------- Per sequence results for {split} ----------\n'
      f'{table_s}\n'
  )


def _format_table(columns: Sequence[Tuple[str, Sequence[Any]]]) -> str:
  """pandas `to_string(index=False)` of string and float columns.

  Float columns get a one-space-wider header (pandas reserves a sign column
  in numeric headers) and `_format_floats` values; every column is
  right-justified to its widest entry and columns are joined by one space.
  """
  cells = []
  for name, values in columns:
    if values and all(isinstance(v, str) for v in values):
      header, strs = name, list(values)
    else:
      header, strs = ' ' + name, _format_floats(values)
    width = max(len(s) for s in [header] + strs)
    cells.append([s.rjust(width) for s in [header] + strs])
  return '\n'.join(
      ' '.join(col[i] for col in cells) for i in range(len(cells[0]))
  )


_DECIMAL_NUMBER = re.compile(r'^\s*[+-]?[0-9]+\.[0-9]*$')


def _format_floats(values: Sequence[float], digits: int = 6) -> List[str]:
  """pandas' default float formatting of one column (display.precision 6).

  Fixed notation with `digits` decimals, then trailing zeros common to all
  values trimmed (keeping one decimal); scientific notation when a nonzero
  value is below 10^-digits in magnitude, or a value is above 1e6 and the
  fixed strings are too long.
  """
  vals = np.asarray(values, dtype=np.float64)
  strs = _trim_common_zeros([f'{v:.{digits}f}' for v in vals])
  too_long = max(len(s) for s in strs) > digits + 6
  mags = np.abs(vals)
  has_small = bool(np.any((mags < 10.0**-digits) & (mags > 0)))
  has_large = bool(np.any(mags > 1e6))
  if has_small or (too_long and has_large):
    strs = [f'{v:.{digits}e}' for v in vals]
  return strs


def _trim_common_zeros(strs: List[str]) -> List[str]:
  def decimal(s):
    return _DECIMAL_NUMBER.match(s) is not None

  while True:
    numbers = [s for s in strs if decimal(s)]
    if not numbers or not all(s.endswith('0') for s in numbers):
      break
    strs = [s[:-1] if decimal(s) else s for s in strs]
  return [s + '0' if decimal(s) and s.endswith('.') else s for s in strs]


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Command-line entry point (flags as in the official tool).

  Args:
    argv: arguments without the program name; default `sys.argv[1:]`.

  Returns:
    0 on success, 1 on a `DavisEvalError` (message on stderr).
  """
  parser = argparse.ArgumentParser(
      prog='python -m cfbi_jax.davis_eval',
      description='DAVIS 2017 semi-supervised J&F of a folder of predictions '
      '(official davis2017-evaluation numbers and CSVs).',
  )
  parser.add_argument(
      '--davis_path',
      required=True,
      help='DAVIS root: ImageSets/, Annotations/, JPEGImages/',
  )
  parser.add_argument(
      '--results_path',
      required=True,
      help='predictions <results_path>/<seq>/<frame>.png; '
      'the CSVs are written here',
  )
  parser.add_argument(
      '--set', default='val', help='split file ImageSets/<year>/<set>.txt'
  )
  parser.add_argument(
      '--task',
      default=SEMI_SUPERVISED,
      help='only semi-supervised is supported',
  )
  parser.add_argument('--year', default='2017', help='ImageSets sub-folder')
  args = parser.parse_args(argv)
  if args.task != SEMI_SUPERVISED:
    parser.error(
        f'only --task {SEMI_SUPERVISED} is supported, got ' f'{args.task!r}'
    )

  start = time.time()
  print(f'Evaluating sequences for the {args.task} task...', flush=True)
  try:
    results = evaluate_davis(
        args.davis_path,
        args.results_path,
        args.set,
        year=args.year,
        task=args.task,
    )
  except DavisEvalError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  global_path, per_seq_path = write_results_csvs(
      results, args.results_path, args.set
  )
  print(f'Global results saved in {global_path}')
  print(f'Per-sequence results saved in {per_seq_path}')
  sys.stdout.write(format_results(results, args.set))
  sys.stdout.write(f'\nTotal time: {time.time() - start:.2f} s\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())

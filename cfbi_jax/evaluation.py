"""Evaluation runs: datasets in, palette PNGs, submissions and scores out.

`run(config)` is what `evaluate.py` calls. It

1. loads the model directory (`checkpoint.load_model`), whose stored config
   selects the variant and its official flags, plus the official DAVIS-script
   flags for DAVIS runs and any `config.model` overrides;
2. lists the sequences (`datasets.davis_sequences`,
   `datasets.youtube_vos_sequences` or `datasets.own_video_sequence`);
3. says where outputs go and which finished sequences it reuses (a
   sequence is reused only if its outputs are complete and its inputs are
   the ones they were computed from: `input_fingerprint`), then
   segments each other sequence, longest first: with one device and
   `video_batch=1` one at a time with `videos.VideoPropagator` (official
   loop, TTA; a per-frame bar with frames/s and an ETA), otherwise side by
   side in the lanes of a `lanes.LanePool` over every local device
   (`config.devices`, `config.video_batch`); under several processes
   (`--distributed`) each takes its share (`share_of_process`) and process
   0 goes on alone with steps 4 and 5 once all are done. It writes palette
   PNGs, optional per-frame probabilities and, for own videos, overlays;
4. packages the YouTube-VOS submission zip, or scores a DAVIS run with
   `davis_eval` when the split has annotations;
5. writes `summary.json` (per-sequence frames per second, total time, peak
   memory, number of compilations) and prints it; the per-sequence rows of
   an earlier run in the same folder are kept for the sequences it reused.

Output layout under `config.output_dir`:
* DAVIS, synthetic and own videos: `<seq>/<frame>.png`;
* YouTube-VOS: `Annotations/<seq>/<frame>.png` and `submission.zip`;
* `save_probs`: `<seq>/<frame>.npz` (key `probs`, `[K+1, H, W]` at the
  original size, background first, objects in id order);
* own and synthetic videos: `<seq>_overlay/<frame>.png` and
  `<seq>_overlay.mp4`;
* `copy_first_frame_baseline`: `copy_first_frame/<seq>/<frame>.png`;
* `.inputs/<seq>.json`: the inputs each finished sequence was computed
  from (`input_fingerprint`).
"""

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Sequence

import jax
import numpy as np
import tqdm

from cfbi_jax import backend
from cfbi_jax import checkpoint
from cfbi_jax import datasets
from cfbi_jax import host_threads
from cfbi_jax import atomic_files
from cfbi_jax import models
from cfbi_jax import output_files
from cfbi_jax import peak_memory
from cfbi_jax import synthetic
from cfbi_jax.inference import lanes as lanes_lib
from cfbi_jax.inference import videos
from cfbi_jax.models import family as family_lib

DATASETS = (
    'davis2016',
    'davis2017',
    'youtubevos2018',
    'youtubevos2019',
    'video',
    'synthetic',
)
# Datasets in the DAVIS 2017 layout, scored with the DAVIS J&F.
_DAVIS17_LAYOUT = ('davis2017', 'synthetic')


def model_overrides(config, stored) -> Dict[str, Any]:
  """Evaluation-only model fields: the official flags of the stored model's
  variant on this dataset, then the user's (`--config.model.<field>`, any
  evaluation field of the stored model's family; `checkpoint.load_model`
  refuses the others in one line). The deprecated `--config.bgr` sets
  `bgr`, with a warning."""
  overrides = models.dataset_overrides(stored, config.dataset)
  if config.get('bgr') is not None:
    print(
        'warning: --config.bgr is deprecated; the input channel order is '
        "the model's own (bgr in its model_config.json); "
        '--config.model.bgr overrides it',
        file=sys.stderr,
    )
    overrides['bgr'] = bool(config.bgr)
  for key, value in config.model.items():
    if value is not None:
      overrides[key] = (
          tuple(value) if isinstance(value, (list, tuple)) else value
      )
  return overrides


def split(config) -> str:
  """`config.data.split`, or the dataset's validation split if empty."""
  if config.data.split:
    return config.data.split
  return 'valid' if config.dataset.startswith('youtubevos') else 'val'


def list_sequences(config) -> List[datasets.VideoSequence]:
  """The sequences of the configured dataset, validated."""
  if config.dataset not in DATASETS:
    raise ValueError(
        f'config.dataset must be one of {DATASETS}, got ' f'{config.dataset!r}'
    )
  if config.dataset == 'video':
    if not config.video or not config.masks:
      raise ValueError('--config.video and --config.masks are required')
    return [
        datasets.own_video_sequence(
            config.video, config.masks, max_objects=config.max_objects
        )
    ]
  if not config.data.root:
    raise ValueError('--config.data.root (the dataset folder) is required')
  if config.dataset == 'synthetic':
    synthetic.ensure_davis_dataset(
        config.data.root,
        config.data.synthetic_videos,
        config.data.synthetic_seed,
        split=split(config),
    )
  if config.dataset.startswith('davis') or config.dataset == 'synthetic':
    return datasets.davis_sequences(
        config.data.root,
        split=split(config),
        year=2016 if config.dataset == 'davis2016' else 2017,
        single_object=config.dataset == 'davis2016',
        max_objects=config.max_objects,
    )
  return datasets.youtube_vos_sequences(
      config.data.root, split(config), max_objects=config.max_objects
  )


def _label_dir(config, name: str) -> str:
  if config.dataset.startswith('youtubevos'):
    return os.path.join(config.output_dir, 'Annotations', name)
  return os.path.join(config.output_dir, name)


def segment_sequence(
    propagator: videos.VideoPropagator,
    seq: datasets.VideoSequence,
    config,
    bars: bool = True,
) -> Dict[str, Any]:
  """Segments one sequence and writes its outputs; returns its timing.

  Files are written on a background thread (`host_threads.BackgroundWriter`)
  while the device segments the next frames; the sequence counts as done
  once every write has finished.
  """
  label_dir = _label_dir(config, seq.name)
  probs_dir = os.path.join(config.output_dir, seq.name)
  overlay_dir = os.path.join(config.output_dir, f'{seq.name}_overlay')
  annotations = {i: seq.load_annotation(i) for i in seq.annotated}
  overlays = config.dataset in ('video', 'synthetic') and config.overlays
  # The frames being segmented, kept for their overlays (so each is read
  # once); filled by the propagator's reading thread.
  current = {}

  def frames():
    for t, _, rgb in seq.iter_frames():
      if overlays:
        current[t] = rgb
      yield rgb

  overlay_frames = []

  def write(t, labels, probs, rgb):
    name = seq.frame_names[t]
    output_files.write_palette_png(
        os.path.join(label_dir, name + '.png'), labels
    )
    if probs is not None:
      output_files.write_probabilities(
          os.path.join(probs_dir, name + '.npz'), np.moveaxis(probs, -1, 0)
      )
    if rgb is not None:
      blended = output_files.overlay(rgb, labels)
      _write_rgb(os.path.join(overlay_dir, name + '.png'), blended)
      overlay_frames.append(blended)

  start, first_done = time.perf_counter(), None
  # Frames inside the sequences bar, with frames/s and an ETA.
  with (
      host_threads.BackgroundWriter() as writer,
      tqdm.tqdm(
          total=len(seq),
          desc=seq.name,
          unit='frame',
          leave=False,
          position=1,
          dynamic_ncols=True,
          disable=not (bars and _bars()),
      ) as bar,
  ):
    for t, labels, probs in propagator.run(
        frames(), annotations, len(seq), with_probs=config.save_probs
    ):
      writer.submit(write, t, labels, probs, current.pop(t, None))
      bar.update(1)
      if t == 0:
        first_done = time.perf_counter()
  total = time.perf_counter() - start
  if overlay_frames:
    output_files.write_overlay_video(
        os.path.join(config.output_dir, f'{seq.name}_overlay.mp4'),
        overlay_frames,
        fps=config.fps or seq.frame_rate() or 24.0,
    )
  propagated = len(seq) - 1
  steady = time.perf_counter() - (first_done or start)
  return {
      'sequence': seq.name,
      'frames': len(seq),
      'seconds': total,
      'fps': propagated / steady if propagated and steady > 0 else 0.0,
  }


def eval_devices(config) -> List[jax.Device]:
  """This process's devices for the run: all local ones, or the first
  `config.devices` of them (0: all)."""
  local = jax.local_devices()
  wanted = int(config.get('devices', 0) or 0)
  if wanted < 0:
    raise ValueError(f'--config.devices={wanted}: give 0 (all) or a count')
  return local[:wanted] if wanted else local


def share_of_process(
    sequences: Sequence[datasets.VideoSequence], index: int, count: int
) -> List[datasets.VideoSequence]:
  """Process `index`'s disjoint share of `sequences` (of `count`): every
  `count`-th of them, longest first, so every process gets long and short
  ones alike."""
  order = sorted(sequences, key=lambda seq: (-len(seq), seq.name))
  return order[index::count]


def segment_sequences(
    runner: Any,
    sequences: Sequence[datasets.VideoSequence],
    config,
    reused: int = 0,
    total: int = 0,
) -> List[Dict[str, Any]]:
  """Segments `sequences`, longest first.

  `runner` is a `videos.VideoPropagator` (one video at a time on one
  device) or a `lanes.LanePool` (videos of one size side by side in the
  lanes of one step over every device). Either way a sequence's outputs
  and then its input fingerprint are written as it finishes
  (`_segment_and_mark`), so a killed run keeps what it finished. `reused`
  and `total` number the one line printed per finished sequence when
  stderr is not a terminal (`reused + i` of `total`).

  Returns:
    The per-sequence rows (`segment_sequence`), in the order finished.
  """
  order = sorted(sequences, key=lambda seq: (-len(seq), seq.name))
  total = total or len(sequences)
  rows, lock = [], threading.Lock()
  if isinstance(runner, videos.VideoPropagator):
    for seq in tqdm.tqdm(
        order, desc='sequences', unit='seq', disable=not _bars()
    ):
      rows.append(_segment_and_mark(runner, seq, config, bars=True))
      if not _bars():
        _report(rows[-1], reused + len(rows), total)
    return rows

  def consume(stream, seq):
    row = _segment_and_mark(stream, seq, config, bars=False)
    with lock:
      rows.append(row)
      _report(row, reused + len(rows), total)
    return row

  runner.run(order, consume, lambda seq: seq.size())
  return rows


def _segment_and_mark(propagator, seq, config, bars: bool) -> Dict[str, Any]:
  """`segment_sequence`, then the fingerprint that marks it finished."""
  with contextlib.suppress(FileNotFoundError):
    os.remove(_fingerprint_path(config, seq.name))
  row = segment_sequence(propagator, seq, config, bars=bars)
  atomic_files.write_json(
      _fingerprint_path(config, seq.name), input_fingerprint(seq)
  )
  return row


def _report(row: Dict[str, Any], count: int, total: int) -> None:
  """One line per finished sequence (a log file gets no bars)."""
  print(
      f'{count}/{total} {row["sequence"]}: '
      f"{row['frames']} frames, {row['fps']:.1f} frames/s",
      file=sys.stderr,
      flush=True,
  )


def _sync(name: str) -> None:
  """Waits for every process (nothing to wait for in a one-process run)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices(f'cfbi_evaluation_{name}')


def _rows_path(config, index: int) -> str:
  return os.path.join(config.output_dir, f'.rows_process_{index}.json')


def _gather_rows(config, rows):
  """All processes' rows on process 0 (None elsewhere), once every process
  has finished its share."""
  if jax.process_count() == 1:
    return rows
  atomic_files.write_json(_rows_path(config, jax.process_index()), rows)
  _sync('segmented')
  if jax.process_index() > 0:
    return None
  gathered = []
  for index in range(jax.process_count()):
    with open(_rows_path(config, index), encoding='utf-8') as f:
      gathered += json.load(f)
    os.remove(_rows_path(config, index))
  return gathered


def _bars() -> bool:
  """Progress bars only on a terminal (a log file would get every redraw)."""
  return sys.stderr.isatty()


def _write_rgb(path: str, rgb: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with atomic_files.atomic_path(path) as tmp:
    Image.fromarray(rgb).save(tmp, format='PNG')


def run(config) -> Dict[str, Any]:
  """Runs an evaluation (see the module docstring)."""
  defaults_for = config.get('defaults_for', config.dataset)
  if defaults_for != config.dataset:
    raise ValueError(
        f'dataset {config.dataset!r} was set over a config made for '
        f'{defaults_for!r}, whose checkpoint, folders and test scale it '
        f'would keep; give it as --config=configs/eval.py:dataset='
        f'{config.dataset} instead of --config.dataset'
    )
  backend.use_compilation_cache(config.compilation_cache_dir)
  if not config.checkpoint:
    raise ValueError(
        '--config.checkpoint (a model directory written by '
        'python -m cfbi_jax.convert or train.py) is required; '
        'for a first try, the bundled model: '
        '--config.checkpoint=tiny_cfbi_synthetic'
    )
  if not config.output_dir:
    raise ValueError('--config.output_dir is required')
  config.checkpoint = checkpoint.resolve_model_dir(config.checkpoint)
  stored = checkpoint.read_model_config(config.checkpoint)
  if config.variant and config.variant != stored.get('variant'):
    raise ValueError(
        f'config variant {config.variant!r} but the checkpoint '
        f'{config.checkpoint} holds {stored.get("variant")!r}'
    )
  _check_writable(config.output_dir)
  sequences = list_sequences(config)
  model, model_config = checkpoint.load_model(
      config.checkpoint, model_overrides(config, stored)
  )
  devices = eval_devices(config)
  options = dict(
      scales=tuple(config.tta.scales),
      flip=config.tta.flip,
      max_long_edge=config.max_long_edge,
      bgr=family_lib.bgr(model_config),
      max_objects=config.max_objects,
  )
  video_batch = int(config.get('video_batch', 1) or 1)
  if video_batch < 1:
    raise ValueError(f'--config.video_batch={video_batch}: give 1 or more')
  if len(devices) * video_batch > 1:
    runner = lanes_lib.LanePool(model, devices, video_batch, **options)
  else:
    runner = videos.VideoPropagator(model, device=devices[0], **options)
  lead = jax.process_index() == 0
  os.makedirs(config.output_dir, exist_ok=True)
  if lead:
    _claim_output_dir(config, family_lib.bgr(model_config))
  _sync('claimed')
  if not lead:  # Refuses, like process 0 would, a claim of another run.
    _claim_output_dir(config, family_lib.bgr(model_config))
  complete = [seq for seq in sequences if _outputs_complete(config, seq)]
  done = {seq.name for seq in complete if _inputs_unchanged(config, seq)}
  changed = sorted(seq.name for seq in complete if seq.name not in done)
  # Every process has read what is done before any writes more.
  _sync('listed')
  names = lambda found: (
      f" ({', '.join(sorted(found)[:5])}"
      f"{', ...' if len(found) > 5 else ''})"
  )
  if lead:
    print(
        f'outputs: {os.path.abspath(config.output_dir)}; '
        + (
            f'reusing {len(done)} of {len(sequences)} sequences, finished '
            f'there from the same inputs{names(done)}'
            if done
            else (
                f'segmenting all {len(sequences)} sequences'
                if len(sequences) > 1
                else 'segmenting its one sequence'
            )
        )
        + (
            f'; segmenting {len(changed)} again, whose inputs changed since '
            f'their outputs were written{names(changed)}'
            if changed
            else ''
        )
        + (
            f' in {len(devices) * video_batch} lanes on {len(devices)} '
            'devices'
            + (
                f' x {jax.process_count()} processes'
                if jax.process_count() > 1
                else ''
            )
            if len(devices) * video_batch > 1 or jax.process_count() > 1
            else ''
        ),
        flush=True,
    )
  skipped = [seq.name for seq in sequences if seq.name in done]
  mine = share_of_process(
      [seq for seq in sequences if seq.name not in done],
      jax.process_index(),
      jax.process_count(),
  )
  start = time.perf_counter()
  rows = segment_sequences(runner, mine, config, len(skipped), len(sequences))
  rows = _gather_rows(config, rows)
  if rows is None:  # Not process 0: it writes the summary and scores.
    return {'sequences': [], 'process': jax.process_index()}
  path = os.path.join(config.output_dir, 'summary.json')
  rows = _merge_rows(path, rows)
  # In the listing's order, whichever device or process finished first.
  order = {seq.name: i for i, seq in enumerate(sequences)}
  rows.sort(key=lambda row: order.get(row['sequence'], len(order)))
  summary = {
      'variant': model_config.variant,
      'dataset': config.dataset,
      'tta': {'scales': list(config.tta.scales), 'flip': config.tta.flip},
      'sequences': rows,
      'skipped_complete': skipped,
      'total_seconds': time.perf_counter() - start,
      'peak_memory_mb': peak_memory.peak_memory()[0],
      'compilations': runner.compilations,
      'device': str(jax.devices()[0].device_kind),
      'devices': len(devices) * jax.process_count(),
      'video_batch': video_batch,
  }
  if config.dataset.startswith('youtubevos'):
    summary['submission'] = output_files.write_youtube_vos_zip(
        os.path.join(config.output_dir, 'Annotations'),
        os.path.join(config.output_dir, 'submission.zip'),
    )
  # Only DAVIS 2017 splits with full annotations can be scored (test-dev
  # holds first-frame masks only; DAVIS 2016 has its own protocol).
  if (
      config.dataset in _DAVIS17_LAYOUT
      and config.score
      and split(config) not in ('test-dev', 'test-challenge')
  ):
    from cfbi_jax import davis_eval  # pylint: disable=g-import-not-at-top

    scores = davis_eval.evaluate_davis(
        config.data.root, config.output_dir, split=split(config)
    )
    print(davis_eval.format_results(scores, split=split(config)))
    summary['davis'] = scores['global']
    if config.copy_first_frame_baseline:
      summary['copy_first_frame'] = copy_first_frame_baseline(config, sequences)
  atomic_files.write_json(path, summary, indent=2, default=float)
  _print_summary(summary)
  return summary


def _check_writable(folder: str) -> None:
  """Creates `folder` and checks that files can be written there, before
  any model work.

  Raises:
    PermissionError: naming `folder` itself.
  """
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
      pass
  except OSError as error:
    raise PermissionError(
        f'cannot write to the output folder {folder} '
        f'({os.strerror(error.errno) if error.errno else error}); pass a '
        'writable --config.output_dir'
    ) from None


def checkpoint_digest(model_dir: str) -> str:
  """SHA-256 over the relative paths and bytes of every file in `model_dir`
  (a model updated in place gets a new digest)."""
  digest = hashlib.sha256()
  for root, dirs, files in os.walk(model_dir):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      digest.update(os.path.relpath(path, model_dir).encode() + b'\0')
      with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
          digest.update(block)
  return digest.hexdigest()


def _claim_output_dir(config, bgr: bool) -> None:
  """Records which model and settings write `output_dir`; refuses others.

  Finished sequences are skipped on a re-run (resume), so outputs of a
  different model (another folder, or the same folder with other weights),
  or of other test-time settings, would be scored as this run's. A
  non-empty folder without a claim is refused for the same reason.
  """
  claim = {
      'checkpoint': os.path.abspath(config.checkpoint),
      'digest': checkpoint_digest(config.checkpoint),
      'settings': json.loads(
          json.dumps(
              {
                  'tta': config.tta.to_dict(),
                  'max_long_edge': config.max_long_edge,
                  'bgr': bgr,
                  'max_objects': config.max_objects,
                  'model': config.model.to_dict(),
              },
              sort_keys=True,
              default=str,
          )
      ),
  }
  # Fields left at None are the model's own: a claim written when the
  # config had other None fields is the same claim.
  settled = lambda c: dict(
      c,
      settings=dict(
          c.get('settings', {}),
          model={
              k: v
              for k, v in c.get('settings', {}).get('model', {}).items()
              if v is not None
          },
      ),
  )
  path = os.path.join(config.output_dir, 'model.json')
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    differ = sorted(
        k for k in claim if settled(previous).get(k) != settled(claim)[k]
    )
    if differ:
      raise ValueError(
          f'{config.output_dir} holds the outputs of another run '
          f'({", ".join(differ)} differ: {path}); pass another '
          '--config.output_dir (finished sequences are reused on a re-run, '
          "so they would be scored as this run's)"
      )
    return
  if os.listdir(config.output_dir):
    # Written before claims existed, or by hand: nothing says whose it is.
    raise ValueError(
        f'{config.output_dir} is not empty but has no model.json, so its '
        "outputs cannot be told apart from this run's; pass an empty or "
        'new --config.output_dir'
    )
  atomic_files.write_json(path, claim)


def copy_first_frame_baseline(config, sequences) -> Dict[str, float]:
  """Scores the copy-the-first-frame-mask baseline with the same scorer.

  Every frame of each sequence gets its first frame's mask, written under
  `output_dir/copy_first_frame` (palette PNGs) and scored like the model's
  output. The gap to it is how much of a score tracking earns.

  Returns:
    The scorer's global numbers (`J&F-Mean`, `J-Mean`, ...).
  """
  from cfbi_jax import davis_eval  # pylint: disable=g-import-not-at-top

  out = os.path.join(config.output_dir, 'copy_first_frame')
  for seq in sequences:
    first = seq.load_annotation(0)
    for name in seq.frame_names:
      output_files.write_palette_png(
          os.path.join(out, seq.name, name + '.png'), first
      )
  scores = davis_eval.evaluate_davis(config.data.root, out, split=split(config))
  print(
      'copy-first-frame baseline: J&F {:.1f}, J {:.1f}, F {:.1f}'.format(
          *(100 * scores['global'][k] for k in ('J&F-Mean', 'J-Mean', 'F-Mean'))
      )
  )
  return scores['global']


def input_fingerprint(seq: datasets.VideoSequence) -> Dict[str, Any]:
  """What a sequence's outputs are computed from, to tell when to reuse them.

  The frames by file name, size and modification time (a video file the
  same way), the frames segmented, and the SHA-256 of every annotation
  file with the frame it belongs to: a changed mask, an edited or replaced
  frame, or another frame list gives another fingerprint.

  Returns:
    A JSON-serialisable dict.
  """

  def stat(path):
    info = os.stat(path)
    return [os.path.basename(path), info.st_size, info.st_mtime_ns]

  def sha256(path):
    with open(path, 'rb') as f:
      return hashlib.sha256(f.read()).hexdigest()

  files = seq.frame_paths if seq.frame_paths else [seq.video_path]
  return {
      'frames': [stat(p) for p in files],
      'frame_names': list(seq.frame_names),
      'annotations': {
          str(t): sha256(p) for t, p in sorted(seq.annotated.items())
      },
  }


def _fingerprint_path(config, name: str) -> str:
  return os.path.join(config.output_dir, '.inputs', name + '.json')


def _outputs_complete(config, seq: datasets.VideoSequence) -> bool:
  """Whether every output file of `seq` is there."""
  done = output_files.sequence_done(
      _label_dir(config, seq.name), seq.frame_names
  )
  if done and config.save_probs:
    probs_dir = os.path.join(config.output_dir, seq.name)
    done = all(
        os.path.exists(os.path.join(probs_dir, n + '.npz'))
        for n in seq.frame_names[1:]
    )
  return done


def _inputs_unchanged(config, seq: datasets.VideoSequence) -> bool:
  """Whether `seq`'s outputs were computed from its inputs as they are now
  (False when no fingerprint was kept, e.g. an interrupted sequence)."""
  try:
    with open(_fingerprint_path(config, seq.name), encoding='utf-8') as f:
      kept = json.load(f)
  except (OSError, ValueError):
    return False
  return kept == json.loads(json.dumps(input_fingerprint(seq)))


def _merge_rows(path: str, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """This run's per-sequence rows over those of an earlier `summary.json`.

  A re-run that reuses finished sequences keeps their earlier timings; a
  sequence segmented again takes its new row. An unreadable earlier file
  is ignored (it is rewritten).
  """
  try:
    with open(path, encoding='utf-8') as f:
      earlier = json.load(f).get('sequences', [])
  except (OSError, ValueError, AttributeError):
    earlier = []
  new = {row['sequence'] for row in rows}
  return [
      row
      for row in earlier
      if isinstance(row, dict) and row.get('sequence') not in new
  ] + rows


def _print_summary(summary: Dict[str, Any]) -> None:
  for row in summary['sequences']:
    print(
        f"{row['sequence']:30s} {row['frames']:5d} frames "
        f"{row['fps']:7.2f} fps"
    )
  if 'davis' in summary:
    tta = summary['tta']
    setting = (
        'test scale '
        + ', '.join(f'{s:g}' for s in tta['scales'])
        + (' + flip' if tta['flip'] else '')
    )
    line = (
        f"{summary['variant']} on {summary['dataset']} ({setting}): "
        f"J&F {100 * summary['davis']['J&F-Mean']:.1f}"
    )
    if 'copy_first_frame' in summary:
      line += (
          ' (copy-first-frame baseline '
          f"{100 * summary['copy_first_frame']['J&F-Mean']:.1f})"
      )
    print(line)
  if summary['skipped_complete']:
    print(f"skipped (already complete): {len(summary['skipped_complete'])}")
  print(
      f"total {summary['total_seconds']:.1f} s, peak memory "
      f"{summary['peak_memory_mb']:.0f} MB, {summary['compilations']} "
      f"compiled shapes on {summary['device']}"
  )

"""What the reduced-precision switches do to the parity clip's outputs.

    python bench/precision_effect.py [--variants cfbi_resnet101 ...]

For every variant of the official parity fixtures (`../shared/fixtures/
parity`, or `CFBI_PARITY_DIR`), the fixture weights are converted and the
whole clip is segmented by the evaluation loop
(`inference.videos.VideoPropagator`, its own predictions fed back, as the
official loop does) in each setting:

* `float32`: the official setting (the parity tests' path);
* `compute_bf16` / `compute_f16`: `model.compute_dtype=bfloat16` /
  `float16` (DeepLab and the ensembler in half precision);
* `matching_f16`: `model.matching_dtype=float16` (the official `--float16`);
* `bf16_all`: both.

It prints, per setting, the largest difference of the first propagated
frame's probabilities from the official ones (the parity tests hold
float32 to the fixture's `probs` tolerance), and the share of label pixels
equal to the official labels over frames 1.. (near-tie pixels, which the
fixtures mark, excluded). The fixture weights are random, which makes
near-ties common; `--bundled` adds what matters for a trained network: the
J&F of the bundled model (`python evaluate.py`'s default run: 20 held-out
synthetic videos) in each setting.
"""

import argparse
import os
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from cfbi_jax.inference import videos  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests import parity_fixtures as pf  # pylint: disable=g-import-not-at-top,wrong-import-position

SETTINGS = {
    'float32': {},
    'compute_bf16': {'compute_dtype': 'bfloat16'},
    'compute_f16': {'compute_dtype': 'float16'},
    'matching_f16': {'matching_dtype': 'float16'},
    'bf16_all': {'compute_dtype': 'bfloat16', 'matching_dtype': 'float16'},
}


def run(variant: str, fields: dict):
  """Labels and frame-1 probabilities of the clip in one setting."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  module = pf.build_model(variant)
  for key, value in fields.items():
    setattr(module, key, value)
  frames_dir = pf.path('clip', 'frames')
  names = sorted(os.listdir(frames_dir))
  frames = [
      np.asarray(Image.open(os.path.join(frames_dir, n)).convert('RGB'))
      for n in names
  ]
  first = np.asarray(Image.open(pf.path('clip', 'annotations', '00000.png')))
  prop = videos.VideoPropagator(module)
  outs = list(prop.run(frames, {0: first}, len(frames), with_probs=True))
  return [o[1] for o in outs], outs[1][2]


def bundled_jf(settings, out_dir: str) -> str:
  """A table of the J&F of `python evaluate.py`'s default run per setting."""
  import contextlib  # pylint: disable=g-import-not-at-top
  from configs import eval as eval_config  # pylint: disable=g-import-not-at-top
  from cfbi_jax import evaluation  # pylint: disable=g-import-not-at-top

  lines = ['| bundled model, setting | J&F | J | F |', '|---|---|---|---|']
  for setting in settings:
    config = eval_config.get_config()
    config.output_dir = os.path.join(out_dir, setting)
    config.data.root = os.path.join(out_dir, 'synthetic_eval')
    config.copy_first_frame_baseline = False
    config.overlays = False
    for key, value in SETTINGS[setting].items():
      config.model[key] = value
    with contextlib.redirect_stdout(sys.stderr):  # The scorer's tables.
      summary = evaluation.run(config)['davis']
    lines.append(
        f"| {setting} | {100 * summary['J&F-Mean']:.2f} | "
        f"{100 * summary['J-Mean']:.2f} | "
        f"{100 * summary['F-Mean']:.2f} |"
    )
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variants', nargs='+', default=None)
  parser.add_argument('--settings', nargs='+', default=list(SETTINGS))
  parser.add_argument(
      '--bundled',
      default='',
      help='also score the bundled model; outputs go here',
  )
  args = parser.parse_args()
  if args.bundled:
    print(bundled_jf(args.settings, args.bundled) + '\n', flush=True)
  variants = args.variants or pf.variants()
  if not variants:
    raise SystemExit(f'no parity fixtures under {pf.path()}')
  print(
      '| variant | setting | frame-1 probs max abs diff to official | '
      'probs atol (float32 parity) | labels equal to official, frames 1.. '
      '(near ties excluded) |'
  )
  print('|---|---|---|---|---|')
  for variant in variants:
    seq = pf.load_npz(variant, 'sequence.npz')
    official_probs = np.moveaxis(
        pf.load_npz(variant, 'frame1.npz')['probs'][0], 0, -1
    )
    for setting in args.settings:
      labels, probs = run(variant, SETTINGS[setting])
      diff = float(np.max(np.abs(probs - official_probs)))
      agree, total = 0, 0
      for t in range(1, len(labels)):
        keep = ~seq['near_tie'][t - 1].astype(bool)
        agree += int(np.sum((labels[t] == seq['pred_labels'][t]) & keep))
        total += int(np.sum(keep))
      print(
          f'| {variant} | {setting} | {diff:.2e} | '
          f'{pf.atol(variant, "probs"):.0e} | {100 * agree / total:.3f}% |',
          flush=True,
      )


if __name__ == '__main__':
  main()

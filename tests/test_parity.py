"""Parity with the official PyTorch code on the shared fixtures.

For every variant folder in `CFBI_PARITY_DIR`: rebuild the manifest weights,
convert them with `cfbi_jax.convert`, run our model on the stored input
tensors and compare with what the official code computed, within the
`tolerances.json` atol of that folder:

* frame-0 and frame-1 backbone features, ASPP, decoder and embeddings;
* the frame-1 intermediates (matching maps, pre-head, attention vectors,
  fg/bg logits), the stride-4 logits, the probabilities at the original size
  and the label map (exact away from near-ties);
* the stride-4 logits of every later frame, teacher-forced with the masks
  the official loop fed (growing reference sets included), in the default
  setting and in the variant's alternative official flags (`alt_setting`).

Objects are padded with one extra invalid slot to show that padding does not
touch the valid outputs. Full ResNet-101 sizes: marked slow.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfbi_jax import resize
from cfbi_jax import vos
from tests import parity_fixtures as pf

pytestmark = [pf.requires_parity, pytest.mark.slow]

EXTRA_SLOTS = 1  # Padded, invalid object slots appended in every test.


@nnx.jit
def _embed(module, images):
  emb, feats = module.embed(images)
  return emb, feats


@nnx.jit
def _segment(module, state, current, obj_valid):
  out = module.segment(state, current, obj_valid)
  return out.logits, out.aux


@functools.lru_cache(maxsize=None)
def _run(variant: str, setting: str):
  """Embeds every frame and segments frames 1.. teacher-forced.

  The frames run through the per-frame carry of `cfbi_jax.vos`
  (`start`, then `segment` and `advance` per frame), with the official
  labels fed back in place of our own: the previous mask, and the merged
  label of every frame that became a reference (where `n_refs` grows).

  Returns:
    (embeddings, features, {t: (logits, aux)}).
  """
  module = pf.build_model(variant, setting)
  clip = pf.load_npz('clip', 'inputs.npz')
  seq = pf.load_npz(variant, 'sequence.npz')
  alt = pf.load_npz(variant, 'alt_setting.npz') if setting == 'alt' else None
  images = np.moveaxis(clip['images'], 1, -1)  # [T, H, W, 3]
  num_frames = images.shape[0]
  embs, feats = [], []
  for t in range(num_frames):
    e, f = _embed(module, jnp.asarray(images[t : t + 1]))
    embs.append(e)
    feats.append(f)
  gt_ids, n_refs = seq['gt_ids'], seq['n_refs']
  # Labels the official loop produced (and fed back) for every frame.
  labels = (
      alt['pred_labels'] if alt is not None else seq['pred_labels']
  ).astype(np.int32)
  labels[0] = clip['annotation_f00']
  if alt is None:
    np.testing.assert_array_equal(seq['prev_mask_fed'], labels[:-1])
  ref_slots = int(n_refs[-1])
  num_slots = int(np.max(gt_ids)) + 1 + EXTRA_SLOTS
  state = vos.start(embs[0], jnp.asarray(labels[:1]), ref_slots)
  outputs = {}
  for t in range(1, num_frames):
    assert int(np.sum(state.ref_valid)) == n_refs[t]
    obj_valid = (np.arange(num_slots) <= gt_ids[t])[None]
    logits, aux = _segment(module, state, embs[t], jnp.asarray(obj_valid))
    outputs[t] = (np.asarray(logits[0]), jax.tree.map(np.asarray, aux))
    becomes_reference = t + 1 < num_frames and n_refs[t + 1] > n_refs[t]
    state = vos.advance(
        state,
        embs[t],
        jnp.asarray(labels[t : t + 1]),
        jnp.asarray([becomes_reference]),
    )
  return embs, feats, outputs


# (variant, array, max abs diff, diff / max |official|, atol) of every check;
# printed as a table at the end of the module (run with -s to see it).
REPORT = []


@pytest.fixture(scope='module', autouse=True)
def _print_report():
  yield
  if REPORT:
    print(
        '\nparity: variant, array, max abs diff, relative to max |official|,'
        ' atol'
    )
    for row in REPORT:
      print('  {:18s} {:28s} {:10.3e} {:10.3e} {:8.0e}'.format(*row))


def _check(variant, name, ours, theirs, label=None):
  diff = pf.max_abs_diff(ours, theirs)
  tol = pf.atol(variant, name)
  scale = float(np.max(np.abs(np.asarray(theirs, np.float64))))
  REPORT.append((variant, label or name, diff, diff / max(scale, 1e-12), tol))
  assert diff <= tol, f'{variant} {name}: max abs diff {diff} > atol {tol}'


VARIANTS = pf.variants()


@pytest.mark.parametrize('variant', VARIANTS)
def test_features(variant):
  embs, feats, _ = _run(variant, 'default')
  f1 = pf.load_npz(variant, 'frame1.npz')
  f0 = pf.load_npz(variant, 'frame0.npz')
  ours = {k: pf.nchw(v[0]) for k, v in feats[1].items()}
  names = {
      'backbone_s16': 'backbone_s16',
      'backbone_s4': 'low_s4',
      'backbone_s8': 'mid_s8',
      'aspp_out': 'aspp_s16',
      'decoder_out': 'decoder_s4',
  }
  for fixture_name, our_name in names.items():
    if fixture_name not in f1:
      continue
    x = ours[our_name]
    if fixture_name + '_chmean' in f1:
      _check(
          variant,
          fixture_name + '_chmean',
          x.astype(np.float64).mean(axis=(1, 2)),
          f1[fixture_name + '_chmean'],
      )
    channels = f1.get(fixture_name + '__channels')
    _check(
        variant,
        fixture_name,
        x[channels] if channels is not None else x,
        f1[fixture_name][0],
    )
  emb_names = (
      ['embedding']
      if len(embs[1].scales) == 1
      else ['embedding_4x', 'embedding_8x', 'embedding_16x']
  )
  for s, name in enumerate(emb_names):
    for frame, fixture in ((1, f1), (0, f0)):
      x = pf.nchw(embs[frame].scales[s][0])
      channels = fixture.get(name + '__channels')
      _check(
          variant,
          f'{name} f{frame}' if frame == 0 else name,
          x[channels] if channels is not None else x,
          fixture[name][0],
      )


def _frame1_pairs(variant, aux):
  """(fixture name, our array in fixture layout) for frame-1 intermediates."""
  f1 = pf.load_npz(variant, 'frame1.npz')
  suffixes = (
      [('', 's4')]
      if 'global_fg' in f1
      else [('_4x', 's4'), ('_8x', 's8'), ('_16x', 's16')]
  )
  pairs = []
  for fx, ours in suffixes:
    k1 = f1[f'global_fg{fx}'].shape[0]
    for kind in ('global_fg', 'global_bg'):
      pairs.append((kind + fx, aux[f'{kind}_{ours}'][0, :k1, None]))
    for kind in ('local_fg', 'local_bg'):
      pairs.append(
          (kind + fx, np.moveaxis(aux[f'{kind}_{ours}'][0, :k1], -1, 1))
      )
    pairs.append(
        (f'prev_label_onehot{fx}', aux[f'prev_onehot_{ours}'][0, :k1, None])
    )
  k1 = f1['fg_logit'].shape[0]
  att = 'attention_head' if 'attention_head' in f1 else 'attention_head_4x'
  pairs.append((att, aux['attention_s4'][0, :k1]))
  pairs.append(('fg_logit', aux['fg_logit'][0, :k1, None]))
  pairs.append(('bg_logit', aux['bg_logit'][0, :k1, None]))
  if 'prehead_out' in f1:
    pairs.append(
        (
            'prehead_out',
            pf.nchw(aux['prehead'][0, :k1])[:, f1['prehead_out__channels']],
        )
    )
  return pairs


@pytest.mark.parametrize('variant', VARIANTS)
def test_frame1(variant):
  _, _, outputs = _run(variant, 'default')
  logits, aux = outputs[1]
  f1 = pf.load_npz(variant, 'frame1.npz')
  for name, ours in _frame1_pairs(variant, aux):
    _check(variant, name, ours, f1[name])
  k1 = f1['ensembler_logits'].shape[1]
  _check(
      variant,
      'ensembler_logits',
      pf.nchw(logits[..., :k1]),
      f1['ensembler_logits'][0],
  )
  # Padded slots never win.
  assert np.all(logits[..., k1:] == vos.INVALID_LOGIT)
  orig = tuple(int(v) for v in pf.load_npz('clip', 'inputs.npz')['orig_size'])
  probs = jax.nn.softmax(
      resize.resize_bilinear_ac(jnp.asarray(logits[None, ..., :k1]), orig),
      axis=-1,
  )[0]
  _check(variant, 'probs', pf.nchw(probs), f1['probs'][0])
  label = np.argmax(np.asarray(probs), axis=-1)
  near_tie = pf.load_npz(variant, 'sequence.npz')['near_tie'][0].astype(bool)
  mismatched = (label != f1['pred_label']) & ~near_tie
  assert not mismatched.any(), f'{mismatched.sum()} label pixels differ'


@pytest.mark.parametrize('setting', ['default', 'alt'])
@pytest.mark.parametrize('variant', VARIANTS)
def test_sequence_teacher_forced(variant, setting):
  _, _, outputs = _run(variant, setting)
  stored = pf.load_npz(
      variant, 'sequence.npz' if setting == 'default' else 'alt_setting.npz'
  )
  for t, (logits, aux) in outputs.items():
    theirs = stored[f'logits_s4_f{t:02d}'][0]
    name = f'logits_s4_f{t:02d}'
    _check(
        variant,
        name,
        pf.nchw(logits[..., : theirs.shape[0]]),
        theirs,
        label=f'{name} ({setting})',
    )
    if t == 1 and setting == 'alt':
      for key in stored:
        if key.startswith('global_fg') and key.endswith('_f01'):
          scale = {
              'global_fg_f01': 's4',
              'global_fg_4x_f01': 's4',
              'global_fg_8x_f01': 's8',
              'global_fg_16x_f01': 's16',
          }[key]
          k1 = stored[key].shape[0]
          _check(
              variant, key, aux[f'global_fg_{scale}'][0, :k1, None], stored[key]
          )

"""cfbi-jax: CFBI and CFBI+ video object segmentation in JAX / Flax NNX, with
FEELVOS and VideoMatch, the systems CFBI grew out of, on the same footing.

Conventions used throughout the package:

* Arrays are NHWC (`[batch, height, width, channels]`); label maps are
  `[batch, height, width]` integers with 0 = background and 1..K = objects.
* Features are named by stride: `low_s4`, `mid_s8`, `aspp_s16`,
  `decoder_s4`, `features_s4`; matching outputs carry the scale (`global_fg_s4`).
* Objects are padded to a fixed number of slots with an `obj_valid`
  `[batch, K + 1]` mask; slot 0 is the background, which is matched and
  segmented like any other object (as in the official code). Nothing loops
  over objects in Python.
* Parity with the official PyTorch code (github.com/z-x-yang/CFBI @ 91fc6a31)
  is the reference; deliberate deviations are config switches.

Which file to open for what:

* a model family (its network, variants, evaluation flags, checkpoint
  names): `models/<name>.py`, ending in its `models.family.Family` record,
  registered with one line in `models/__init__.py`
  (`models.build(config.model)`); CFBI and CFBI+ are `models/cfbi.py`,
  FEELVOS `models/feelvos.py`, VideoMatch `models/videomatch.py`;
* the blocks models are built from: `backbone` (DeepLabV3+ and its
  checkpoint names), `embedding` (CFBI head, CFBI+ FPN), `matching` (pure
  matching functions), `attention`, `ensembler`, `layers`, `resize` (the
  official resizing rules);
* the per-frame contract every model follows and every caller shares (the
  `embed` / `segment` protocol, the carried state): `vos`; the label
  conventions: `masks` (NumPy only);
* inference, in `inference/`: `step` (the pure jitted device step, its
  static spec and the official input sizing), `session`
  (`cfbi_jax.Session`, frame by frame on a stream), `videos` (the official
  evaluation loop over videos), `export` (the step as a `jax.export`
  artifact);
* datasets, outputs and scores: `evaluation` (what `evaluate.py` runs),
  `datasets`, `output_files`, `metrics`, `davis_eval`;
* training: `trainer` (what `train.py` runs), `train_step` (the pure
  jitted step), `losses`, `optimizer`, `input_pipeline` / `preprocess`
  (tf.data, the only TensorFlow users), `data_config`, `sharding`;
* weights: `convert` (official PyTorch weights), `checkpoint` (orbax model
  directories);
* the command lines: `commands` (evaluate, train, convert, export), `cli`
  (one-line errors, signals), `project_files`;
* the machine: `backend` (the one CPU/GPU branch, the compilation cache),
  `host_threads` (read-ahead, write-behind), `peak_memory`, `atomic_files`
  (every file is written through it); `synthetic` (the synthetic
  benchmark).
"""

__version__ = '0.1.0'


def __getattr__(name):
  # Imported on first use, so that `import cfbi_jax.<module>` stays light.
  if name == 'Session':
    from cfbi_jax.inference.session import Session  # pylint: disable=g-import-not-at-top

    return Session
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

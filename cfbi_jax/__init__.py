"""cfbi-jax: CFBI and CFBI+ video object segmentation in JAX / Flax NNX.

Conventions used throughout the package:

* Arrays are NHWC (`[batch, height, width, channels]`); label maps are
  `[batch, height, width]` integers with 0 = background and 1..K = objects.
* Features are named by stride: `low_s4`, `mid_s8`, `aspp_s16`,
  `decoder_s4`; matching outputs carry the scale (`global_fg_s4`).
* Objects are padded to a fixed number of slots with an `obj_valid`
  `[batch, K + 1]` mask; slot 0 is the background, which is matched and
  segmented like any other object (as in the official code). Nothing loops
  over objects in Python.
* Parity with the official PyTorch code (github.com/z-x-yang/CFBI @ 91fc6a31)
  is the reference; deliberate deviations are config switches.

Modules: `resize` (official resizing rules), `layers`, `backbone` (DeepLabV3+),
`embedding` (CFBI head, CFBI+ FPN), `matching` (pure matching functions),
`attention`, `ensembler`, `model` (the `CFBI` module), `presets` (variant
settings), `convert` (official weights), `checkpoint` (orbax model
directories), `preprocessing` (official eval sizing), `inference` (the
per-frame step and the eval loop), `datasets`, `outputs`, `evaluation`,
`metrics` and `davis_eval` (DAVIS J&F).

`Session` (`cfbi_jax.session`) segments a stream frame by frame.
"""


def __getattr__(name):
  # Imported on first use, so that `import cfbi_jax.<module>` stays light.
  if name == 'Session':
    from cfbi_jax.session import Session  # pylint: disable=g-import-not-at-top
    return Session
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

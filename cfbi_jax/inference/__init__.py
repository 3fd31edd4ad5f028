"""Inference: the device step and the three ways to run it.

* `step`: one frame of the official evaluation loop as a pure jitted
  function (`first_frame`, `next_frame`), its static settings (`make_spec`:
  the official input sizing, test-time augmentations, the model's channel
  order) and `compile_steps`;
* `session`: `Session`, frame by frame on a stream;
* `videos`: `VideoPropagator`, the evaluation loop over videos (what
  `evaluation.run` and so `evaluate.py` use), a loop over sessions;
* `export`: the step with its weights as a `jax.export` artifact
  (`cfbi-export`).

All of them run the step that `make_spec` describes on the model split by
`step.split_for_inference`, so at the same settings they give the same
labels (tests check it).
"""

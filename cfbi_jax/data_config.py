"""The training data block of the configs (`config.data`) and its values.

Kept apart from `input_pipeline` (which imports TensorFlow) so that the
training configs, and `train.py --help`, load without TensorFlow: an
inference install (no `[train]` extra) can still read them.
"""

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
  """The training data block (`config.data`), with the recipe's values.

  Values follow notes §19 / §20.2 (the official config's DATA_* fields and
  the third-party recipe that uses them).

  Returns:
    ConfigDict with fields:
      source: 'youtubevos' | 'davis' | 'mixed' (YouTube-VOS at `root` plus
        DAVIS at `davis_root` repeated `davis_repeat` times, the official
        DATASETS=['youtubevos', 'davis2017'] mixture) | 'tfds' (records
        written by the builders in `data/`) | 'synthetic' (the
        `cfbi_jax.synthetic` benchmark: `synthetic_videos` videos drawn
        from `synthetic_seed` into `root` in the DAVIS layout if that
        split is not there yet, then read like 'davis').
      root: dataset folder (required). YouTube-VOS: the folder holding
        `<split>/meta.json`; DAVIS: the folder holding `ImageSets`.
      split: YouTube-VOS split folder / DAVIS split file ('train').
      davis_resolution: DAVIS image folder ('480p').
      davis_root, davis_repeat: the DAVIS part of 'mixed' (30).
      tfds_name, tfds_data_dir, tfds_split: the 'tfds' source
        ('cfbi_youtube_vos' or 'cfbi_davis', TFDS data_dir, 'train').
      synthetic_videos, synthetic_seed: the 'synthetic' source (200, 1).
      crop_size: S, output height and width (465).
      scale_range: random scale relative to `short_edge` ((1.0, 1.3)).
      short_edge: short edge at scale 1 (480).
      flip_prob: horizontal flip probability (0.5).
      frame_sampling: 'clip' (a previous frame and N current frames at
        gaps of 1..`max_gap`) or 'pairs' (each uniform over the video, a
        random pair with the reference: VideoMatch's training).
      max_gap: largest gap between sampled frames, 1 = consecutive (3).
      reverse_prob: probability of playing a clip backwards (0.5).
      reference_tries, reference_min_pixels: reference candidates and the
        foreground they need (5, 200).
      crop_max_tries: random crop windows tried (5).
      balanced_crop: False takes the first random window whatever it
        shows (the normal crop of the CFBI Table 4 ablation).
      crop_min_foreground: foreground fraction the cropped reference needs
        (0.0: the recipe only asks for one kept object, which already
        means > `min_object_pixels` foreground pixels).
      min_object_pixels: objects of the cropped reference with more pixels
        are kept (100).
      max_objects: most objects per clip (5); `object_valid` has one more
        slot, the background.
      num_parallel_calls: parallel clip loading (-1 = tf.data.AUTOTUNE,
        which with the autotuning model off is one call per CPU core).
      prefetch: batches prefetched (-1 = tf.data.AUTOTUNE: a buffer that
        grows while the consumer waits).
  """
  c = ml_collections.ConfigDict()
  c.source = 'youtubevos'
  c.root = ''
  c.split = 'train'
  c.davis_resolution = '480p'
  c.davis_root = ''
  c.davis_repeat = 30
  c.tfds_name = 'cfbi_youtube_vos'
  c.tfds_data_dir = ''
  c.tfds_split = 'train'
  c.synthetic_videos = 200
  c.synthetic_seed = 1
  c.crop_size = 465
  c.scale_range = (1.0, 1.3)
  c.short_edge = 480
  c.flip_prob = 0.5
  c.frame_sampling = 'clip'
  c.max_gap = 3
  c.reverse_prob = 0.5
  c.reference_tries = 5
  c.reference_min_pixels = 200
  c.crop_max_tries = 5
  c.crop_min_foreground = 0.0
  c.balanced_crop = True
  c.min_object_pixels = 100
  c.max_objects = 5
  c.num_parallel_calls = -1
  c.prefetch = -1
  return c

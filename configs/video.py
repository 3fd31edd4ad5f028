r"""Segment your own video with a converted (or trained) model.

    python evaluate.py --config=configs/video.py --config.video=clip.mp4 \
        --config.masks=first_frame.png --config.checkpoint=ckpt/cfbi_resnet101 \
        --config.output_dir=out/clip

`--config.checkpoint=tiny_cfbi_synthetic` (the bundled model, trained on
synthetic shapes: a first try, not real quality) runs without converting
anything.

`video` is a folder of frames or a video file (mp4, avi, mov, mkv, webm);
`masks` is the first frame's palette PNG, or a folder of PNGs named after
frames where a PNG may hold only the objects that first appear there.
Preprocessing is the official YouTube-VOS single-scale one (long edge capped
at 1040, sizes snapped to 16k+1). Outputs: palette PNGs, overlays (PNG and
mp4) and, with `--config.save_probs=True`, per-frame probabilities.
"""

from configs import eval as eval_config


def get_config(arg=None):
  return eval_config.get_config(
      f'dataset=video,{arg}' if arg else 'dataset=video'
  )

r"""TFDS builder `cfbi_youtube_vos`: YouTube-VOS training videos as records.

Reads a local copy of the standard YouTube-VOS (2018 or 2019) layout
(`data/README.md`) and writes one record per training video
(`data/video_records.py`): only the annotated frames (every fifth; the
frames of objects listed in at least 2 frames of `meta.json`, as
`youtube_vos_train_videos` selects them). Split: 'train'. From the
repository root:

    PYTHONPATH=. python data/youtube_vos/youtube_vos.py \
        --manual_dir=/path/to/YouTubeVOS --data_dir=/path/to/tensorflow_datasets

then train with `config.data.source='tfds'`,
`config.data.tfds_name='cfbi_youtube_vos'` and `config.data.tfds_data_dir`.
"""

from cfbi_jax import input_pipeline
from data import video_records


class CfbiYoutubeVos(video_records.VideoRecordsBuilder):
  """YouTube-VOS training videos (annotated frames) for cfbi-jax."""

  HOMEPAGE = 'https://youtube-vos.org/'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the YouTube-VOS train split from https://youtube-vos.org and pass
  the folder holding `train/meta.json`, `train/JPEGImages/` and
  `train/Annotations/` as --manual_dir.
  """

  def _split_videos(self, root):
    return {'train': input_pipeline.youtube_vos_train_videos(root, 'train')}


if __name__ == '__main__':
  video_records.build_main(CfbiYoutubeVos)

"""TFDS builder `cfbi_youtube_vos`: YouTube-VOS training videos as records.

Reads a local copy of the standard YouTube-VOS (2018 or 2019) layout
(`data/README.md`) and writes one record per training video in
`cfbi_jax.input_pipeline`'s format (`tfds_video_features`): only the
annotated frames (every fifth; the frames of objects listed in at least 2
frames of `meta.json`, as `youtube_vos_train_videos` selects them) with
their JPEG bytes unchanged and masks as uint8 arrays, in name order, as
array_record shards so that training can read any video by index. Split:
'train'. From the repository root:

    PYTHONPATH=. python data/youtube_vos/youtube_vos.py \
        --manual_dir=/path/to/YouTubeVOS --data_dir=/path/to/tensorflow_datasets

then train with `config.data.source='tfds'`,
`config.data.tfds_name='cfbi_youtube_vos'` and `config.data.tfds_data_dir`.

(This entry point stands in for `tfds build`: the pinned tensorflow-datasets
CLI does not start without apache-beam, which is not a dependency.)
"""

import argparse
import os

import tensorflow_datasets as tfds

from cfbi_jax import input_pipeline


class CfbiYoutubeVos(tfds.core.GeneratorBasedBuilder):
  """YouTube-VOS training videos (annotated frames) for cfbi-jax."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Whole videos: JPEG bytes and uint8 masks.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the YouTube-VOS train split from https://youtube-vos.org and pass
  the folder holding `train/meta.json`, `train/JPEGImages/` and
  `train/Annotations/` as --manual_dir.
  """

  def __init__(self, *, file_format=None, **kwargs):
    # Random access (tfds data sources) needs array_record.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=input_pipeline.tfds_video_features(),
        homepage='https://youtube-vos.org/',
        disable_shuffling=True,  # Record i is the i-th video by name.
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    videos = input_pipeline.youtube_vos_train_videos(
        os.fspath(dl_manager.manual_dir), 'train')
    self.info.metadata['train'] = input_pipeline.tfds_video_metadata(videos)
    return {'train': self._generate_examples(videos)}

  def _generate_examples(self, videos):
    for index, video in enumerate(videos):
      yield index, input_pipeline.tfds_video_example(video)


def main():
  parser = argparse.ArgumentParser(description='Builds CfbiYoutubeVos.')
  parser.add_argument('--manual_dir', required=True,
                      help='the raw dataset folder (data/README.md)')
  parser.add_argument('--data_dir', required=True, help='TFDS data_dir')
  args = parser.parse_args()
  CfbiYoutubeVos(data_dir=args.data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=args.manual_dir))


if __name__ == '__main__':
  main()

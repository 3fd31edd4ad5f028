"""TFDS builder `cfbi_davis`: DAVIS 2017 videos as whole-video records.

Reads a local copy of the standard DAVIS 2017 layout (`data/README.md`)
and writes one record per video in `cfbi_jax.input_pipeline`'s format
(`tfds_video_features`: the JPEG bytes unchanged, masks as uint8 arrays),
in name order, as array_record shards so that training can read any video
by index. Splits: 'train' and, when its split file exists, 'val' (also
fully annotated). From the repository root:

    PYTHONPATH=. python data/davis/davis.py --manual_dir=/path/to/DAVIS \
        --data_dir=/path/to/tensorflow_datasets

then train with `config.data.source='tfds'`,
`config.data.tfds_name='cfbi_davis'` and `config.data.tfds_data_dir` set.

(This entry point stands in for `tfds build`: the pinned tensorflow-datasets
CLI does not start without apache-beam, which is not a dependency.)
"""

import argparse
import os

import tensorflow_datasets as tfds

from cfbi_jax import input_pipeline


class CfbiDavis(tfds.core.GeneratorBasedBuilder):
  """DAVIS 2017 (480p) training videos for cfbi-jax."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Whole videos: JPEG bytes and uint8 masks.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download DAVIS 2017 trainval (480p) from https://davischallenge.org and
  pass the folder holding `ImageSets/2017/{train,val}.txt`,
  `JPEGImages/480p/` and `Annotations/480p/` as --manual_dir.
  """

  def __init__(self, *, file_format=None, **kwargs):
    # Random access (tfds data sources) needs array_record.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=input_pipeline.tfds_video_features(),
        homepage='https://davischallenge.org/',
        disable_shuffling=True,  # Record i is the i-th video by name.
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    generators = {}
    for split in ('train', 'val'):
      if split != 'train' and not os.path.isfile(
          os.path.join(root, 'ImageSets', '2017', f'{split}.txt')):
        continue  # Only the training split is required.
      videos = input_pipeline.davis_train_videos(root, split)
      self.info.metadata[split] = input_pipeline.tfds_video_metadata(videos)
      generators[split] = self._generate_examples(videos)
    return generators

  def _generate_examples(self, videos):
    for index, video in enumerate(videos):
      yield index, input_pipeline.tfds_video_example(video)


def main():
  parser = argparse.ArgumentParser(description='Builds CfbiDavis.')
  parser.add_argument('--manual_dir', required=True,
                      help='the raw dataset folder (data/README.md)')
  parser.add_argument('--data_dir', required=True, help='TFDS data_dir')
  args = parser.parse_args()
  CfbiDavis(data_dir=args.data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=args.manual_dir))


if __name__ == '__main__':
  main()

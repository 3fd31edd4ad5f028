"""The shared base of the `data/` TFDS builders: whole videos as records.

Each builder reads a standard raw layout (its `--manual_dir`) and writes one
record per video in `cfbi_jax.input_pipeline`'s format
(`tfds_video_features`: the JPEG bytes unchanged, masks as uint8 arrays),
in name order, as array_record shards so that training can read any video
by index. A builder only says where it comes from (`HOMEPAGE`,
`MANUAL_DOWNLOAD_INSTRUCTIONS`) and which videos each split holds
(`_split_videos`); `build_main` is the command line every builder script
runs. (It stands in for `tfds build`: the pinned tensorflow-datasets CLI
does not start without apache-beam, which is not a dependency.)
"""

import argparse
import os
from typing import Dict, List

import tensorflow_datasets as tfds

from cfbi_jax import input_pipeline


class VideoRecordsBuilder(
    tfds.core.GeneratorBasedBuilder, skip_registration=True
):
  """Whole-video records of a raw layout (subclasses name the videos)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Whole videos: JPEG bytes and uint8 masks.'}
  HOMEPAGE = ''

  def __init__(self, *, file_format=None, **kwargs):
    # Random access (tfds data sources) needs array_record.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _split_videos(
      self, root: str
  ) -> Dict[str, List[input_pipeline.TrainVideo]]:
    """`{split: videos}` found under the manual directory `root`."""
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=input_pipeline.tfds_video_features(),
        homepage=self.HOMEPAGE,
        disable_shuffling=True,  # Record i is the i-th video by name.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    generators = {}
    for split, videos in self._split_videos(
        os.fspath(dl_manager.manual_dir)
    ).items():
      self.info.metadata[split] = input_pipeline.tfds_video_metadata(videos)
      generators[split] = self._generate_examples(videos)
    return generators

  def _generate_examples(self, videos):
    for index, video in enumerate(videos):
      yield index, input_pipeline.tfds_video_example(video)


def build_main(builder_cls) -> None:
  """`--manual_dir RAW --data_dir TFDS`: builds `builder_cls` there."""
  parser = argparse.ArgumentParser(description=f'Builds {builder_cls.name}.')
  parser.add_argument(
      '--manual_dir',
      required=True,
      help='the raw dataset folder (data/README.md)',
  )
  parser.add_argument('--data_dir', required=True, help='TFDS data_dir')
  args = parser.parse_args()
  builder_cls(data_dir=args.data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir)
  )

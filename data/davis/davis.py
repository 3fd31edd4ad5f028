r"""TFDS builder `cfbi_davis`: DAVIS 2017 videos as whole-video records.

Reads a local copy of the standard DAVIS 2017 layout (`data/README.md`) and
writes one record per video (`data/video_records.py`). Splits: 'train' and,
when its split file exists, 'val' (also fully annotated). From the
repository root:

    PYTHONPATH=. python data/davis/davis.py --manual_dir=/path/to/DAVIS \
        --data_dir=/path/to/tensorflow_datasets

then train with `config.data.source='tfds'`,
`config.data.tfds_name='cfbi_davis'` and `config.data.tfds_data_dir` set.
"""

import os

from cfbi_jax import input_pipeline
from data import video_records


class CfbiDavis(video_records.VideoRecordsBuilder):
  """DAVIS 2017 (480p) training videos for cfbi-jax."""

  HOMEPAGE = 'https://davischallenge.org/'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download DAVIS 2017 trainval (480p) from https://davischallenge.org and
  pass the folder holding `ImageSets/2017/{train,val}.txt`,
  `JPEGImages/480p/` and `Annotations/480p/` as --manual_dir.
  """

  def _split_videos(self, root):
    splits = {}
    for split in ('train', 'val'):
      if split != 'train' and not os.path.isfile(
          os.path.join(root, 'ImageSets', '2017', f'{split}.txt')
      ):
        continue  # Only the training split is required.
      splits[split] = input_pipeline.davis_train_videos(root, split)
    return splits


if __name__ == '__main__':
  video_records.build_main(CfbiDavis)

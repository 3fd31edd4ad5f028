"""Tests for `cfbi_jax.atomic_files`: a final name holds old or new content.

Everything is written under tmp_path; after each write the folder is
checked for leftover temporary files.
"""

import json
import os

import pytest

from cfbi_jax import atomic_files


def test_atomic_path_cleans_up_on_error(tmp_path):
  final = tmp_path / 'keep.txt'
  final.write_text('old')
  with pytest.raises(RuntimeError):
    with atomic_files.atomic_path(str(final)) as tmp:
      assert os.path.dirname(tmp) == str(tmp_path)
      assert os.path.basename(tmp).startswith('.')
      with open(tmp, 'w') as f:
        f.write('new')
      raise RuntimeError('interrupted')
  assert final.read_text() == 'old'
  assert os.listdir(tmp_path) == ['keep.txt']


def test_write_json_replaces_and_names_output_on_disk_full(
    tmp_path, monkeypatch
):
  path = tmp_path / 'sub' / 'summary.json'
  atomic_files.write_json(str(path), {'a': 1}, indent=2)
  atomic_files.write_json(str(path), {'b': [1, 2]})
  assert json.loads(path.read_text()) == {'b': [1, 2]}
  assert os.listdir(tmp_path / 'sub') == ['summary.json']

  def full_disk(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(json, 'dump', full_disk)
  with pytest.raises(OSError) as error:
    atomic_files.write_json(str(path), {'c': 3})
  assert error.value.filename == str(path) and error.value.errno == 28
  assert json.loads(path.read_text()) == {'b': [1, 2]}
  assert os.listdir(tmp_path / 'sub') == ['summary.json']

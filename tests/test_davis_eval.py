"""Tests for the DAVIS scorer `cfbi_jax.davis_eval` against the official tool.

The golden tests run on the reference fixture `davis-metric`
(`$CFBI_DAVIS_METRIC_DIR`, default `../shared/fixtures/davis-metric` next to
the repo; see its README for provenance: the official davis2017-evaluation
@ ac7c43f on `data/` + `preds/`). Per-frame J and F must equal
`expected/per_frame.json`, the summaries `expected/results.json`, and the
CSVs and console tables the official files. Error handling is tested on a
tiny synthetic dataset written to `tmp_path`.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cfbi_jax import davis_eval

FIXTURE_DIR = pathlib.Path(
    os.environ.get(
        'CFBI_DAVIS_METRIC_DIR',
        pathlib.Path(__file__).resolve().parents[1]
        / '..'
        / 'shared'
        / 'fixtures'
        / 'davis-metric',
    )
)
REPO = pathlib.Path(__file__).resolve().parents[1]

needs_fixture = pytest.mark.skipif(
    not (FIXTURE_DIR / 'expected' / 'results.json').is_file(),
    reason=f'DAVIS metric fixture not found at {FIXTURE_DIR} '
    '(set CFBI_DAVIS_METRIC_DIR)',
)

# Standard DAVIS / PASCAL VOC colour map, first entries.
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] + [0] * 753


def copy_preds(dst: pathlib.Path) -> pathlib.Path:
  """Writable copy of the fixture predictions (the scorer writes CSVs)."""
  preds = dst / 'preds'
  shutil.copytree(FIXTURE_DIR / 'preds', preds)
  for root, dirs, files in os.walk(preds):
    for name in dirs + files:
      os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
  os.chmod(preds, 0o755)
  return preds


def expected(name: str):
  path = FIXTURE_DIR / 'expected' / name
  return (
      json.loads(path.read_text())
      if name.endswith('.json')
      else (path.read_bytes())
  )


@pytest.fixture(scope='module')
def fixture_run(tmp_path_factory):
  """`evaluate_davis` on a copy of the fixture predictions (run once)."""
  if not (FIXTURE_DIR / 'expected' / 'results.json').is_file():
    pytest.skip(f'DAVIS metric fixture not found at {FIXTURE_DIR}')
  preds = copy_preds(tmp_path_factory.mktemp('davis'))
  return davis_eval.evaluate_davis(str(FIXTURE_DIR / 'data'), str(preds), 'val')


# ----------------------------------------------------------- golden (fixture)
@needs_fixture
def test_per_frame_values_equal_official(fixture_run):
  want = expected('per_frame.json')
  got = fixture_run['per_frame']
  assert list(got) == list(want)
  worst = 0.0
  for seq, w in want.items():
    assert got[seq]['frames'] == w['frames'], seq
    for m in ('J', 'F'):
      assert list(got[seq][m]) == list(w[m]), (seq, m)
      for k, values in w[m].items():
        diff = np.abs(np.array(got[seq][m][k]) - np.array(values))
        worst = max(worst, float(diff.max()))
  assert worst <= 1e-12


@needs_fixture
def test_per_object_and_global_equal_official(fixture_run):
  want = expected('results.json')
  got = fixture_run
  assert len(got['per_object']) == len(want['per_object']) == 18
  for g, w in zip(got['per_object'], want['per_object']):
    for key, value in w.items():
      if isinstance(value, float):
        assert abs(g[key] - value) <= 1e-6, (w['Sequence'], key)
      else:
        assert g[key] == value
  for key, value in want['global'].items():
    assert abs(got['global'][key] - value) <= 1e-6, key
  assert got['sequences'] == want['sequences']


@needs_fixture
def test_cli_writes_official_csvs_and_console(tmp_path, capsys):
  preds = copy_preds(tmp_path)
  # Stale CSVs must be recomputed, not reprinted.
  (preds / 'global_results-val.csv').write_text('stale\n')
  (preds / 'per-sequence_results-val.csv').write_text('stale\n')
  rc = davis_eval.main(
      [
          '--davis_path',
          str(FIXTURE_DIR / 'data'),
          '--results_path',
          str(preds),
          '--set',
          'val',
          '--task',
          'semi-supervised',
      ]
  )
  assert rc == 0
  for name in ('global_results-val.csv', 'per-sequence_results-val.csv'):
    assert (preds / name).read_bytes() == expected(name), name
  assert not [p for p in os.listdir(preds) if p.endswith('.tmp')]

  out = capsys.readouterr().out.replace(str(preds), 'preds')
  want = expected('official_stdout.txt').decode()
  assert _without_timing(out) == _without_timing(want)


def _without_timing(text):
  lines = [l for l in text.splitlines() if not l.startswith('Total time')]
  while lines and not lines[-1].strip():
    lines.pop()
  return lines


@needs_fixture
def test_cli_as_module_subprocess(tmp_path):
  preds = copy_preds(tmp_path)
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'cfbi_jax.davis_eval',
          '--davis_path',
          str(FIXTURE_DIR / 'data'),
          '--results_path',
          str(preds),
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr
  assert ' 0.774381 0.708354  0.766369' in proc.stdout
  assert (preds / 'global_results-val.csv').read_bytes() == expected(
      'global_results-val.csv'
  )


# -------------------------------------------------------- synthetic dataset
def write_png(path: pathlib.Path, labels: np.ndarray, mode: str = 'P'):
  path.parent.mkdir(parents=True, exist_ok=True)
  im = Image.fromarray(labels.astype(np.uint8))
  if mode == 'P':
    im.putpalette(PALETTE)  # an 'L' image with a palette becomes 'P'
  elif mode == 'RGB':
    im = im.convert('RGB')
  im.save(path)


def make_dataset(root: pathlib.Path, num_frames: int = 5):
  """Two sequences of 24x32 frames, 2 and 1 objects; perfect predictions."""
  data, preds = root / 'data', root / 'preds'
  split = data / 'ImageSets' / '2017' / 'val.txt'
  split.parent.mkdir(parents=True)
  split.write_text('seq-a\nseq-b\n')
  for seq, k in (('seq-a', 2), ('seq-b', 1)):
    for t in range(num_frames):
      lab = np.zeros((24, 32), np.uint8)
      lab[3:10, 2 + t : 12 + t] = 1
      if k == 2:
        lab[14:20, 16:28] = 2
      write_png(data / 'Annotations' / '480p' / seq / f'{t:05d}.png', lab)
      write_png(preds / seq / f'{t:05d}.png', lab)
  return data, preds


def test_synthetic_perfect_predictions(tmp_path):
  data, preds = make_dataset(tmp_path)
  res = davis_eval.evaluate_davis(str(data), str(preds))
  assert [r['Sequence'] for r in res['per_object']] == [
      'seq-a_1',
      'seq-a_2',
      'seq-b_1',
  ]
  assert res['global'] == {
      'J&F-Mean': 1.0,
      'J-Mean': 1.0,
      'J-Recall': 1.0,
      'J-Decay': 0.0,
      'F-Mean': 1.0,
      'F-Recall': 1.0,
      'F-Decay': 0.0,
  }
  assert davis_eval.global_csv(res) == (
      'J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n'
      '1.000,1.000,1.000,0.000,1.000,1.000,0.000\n'
  )
  # pandas trims the zeros every value of a column shares (keeping one).
  assert davis_eval.format_results(res).splitlines()[1:3] == [
      ' J&F-Mean  J-Mean  J-Recall  J-Decay  F-Mean  F-Recall  F-Decay',
      '      1.0     1.0       1.0      0.0     1.0       1.0      0.0',
  ]


def test_first_and_last_predictions_are_not_read(tmp_path):
  data, preds = make_dataset(tmp_path)
  (preds / 'seq-a' / '00000.png').unlink()
  write_png(preds / 'seq-a' / '00004.png', np.full((24, 32), 7, np.uint8))
  res = davis_eval.evaluate_davis(str(data), str(preds))
  assert res['global']['J&F-Mean'] == 1.0


def test_label_above_num_objects_is_an_error(tmp_path, capsys):
  data, preds = make_dataset(tmp_path)
  bad = np.zeros((24, 32), np.uint8)
  bad[0, 0] = 3
  write_png(preds / 'seq-a' / '00002.png', bad)
  with pytest.raises(
      davis_eval.DavisEvalError,
      match=r'seq-a: prediction frame 00002 contains label 3',
  ):
    davis_eval.evaluate_davis(str(data), str(preds))
  rc = davis_eval.main(
      ['--davis_path', str(data), '--results_path', str(preds)]
  )
  assert rc == 1
  assert 'label 3' in capsys.readouterr().err
  assert not (preds / 'global_results-val.csv').exists()


def test_missing_prediction_is_an_error_naming_the_file(tmp_path):
  data, preds = make_dataset(tmp_path)
  missing = preds / 'seq-b' / '00003.png'
  missing.unlink()
  with pytest.raises(
      davis_eval.DavisEvalError, match=f'missing prediction file: {missing}'
  ):
    davis_eval.evaluate_davis(str(data), str(preds))


def test_wrong_size_prediction_is_an_error(tmp_path):
  data, preds = make_dataset(tmp_path)
  path = preds / 'seq-a' / '00001.png'
  write_png(path, np.zeros((24, 30), np.uint8))
  with pytest.raises(davis_eval.DavisEvalError, match=f'{path} is 30x24'):
    davis_eval.evaluate_davis(str(data), str(preds))


def test_rgb_prediction_is_an_error(tmp_path):
  data, preds = make_dataset(tmp_path)
  path = preds / 'seq-a' / '00001.png'
  write_png(path, np.zeros((24, 32), np.uint8), mode='RGB')
  with pytest.raises(
      davis_eval.DavisEvalError, match=f"{path} has PIL mode 'RGB'"
  ):
    davis_eval.evaluate_davis(str(data), str(preds))


def test_missing_split_file_and_other_task(tmp_path):
  data, preds = make_dataset(tmp_path)
  with pytest.raises(davis_eval.DavisEvalError, match='split file not found'):
    davis_eval.evaluate_davis(str(data), str(preds), 'test-dev')
  with pytest.raises(davis_eval.DavisEvalError, match='semi-supervised'):
    davis_eval.evaluate_davis(str(data), str(preds), task='unsupervised')
  with pytest.raises(SystemExit) as exc:
    davis_eval.main(
        [
            '--davis_path',
            str(data),
            '--results_path',
            str(preds),
            '--task',
            'unsupervised',
        ]
    )
  assert exc.value.code == 2


def test_format_floats_pandas_rules():
  fmt = davis_eval._format_floats
  assert fmt([0.5, 0.25]) == ['0.50', '0.25']
  assert fmt([1.0, 0.642857]) == ['1.000000', '0.642857']
  assert fmt([0.0]) == ['0.0']
  # A nonzero value that would print as zero switches to scientific.
  assert fmt([1e-17, 0.5]) == ['1.000000e-17', '5.000000e-01']

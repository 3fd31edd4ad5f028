"""Tests for `bench/step_cost.py`, the static cost of the step's GPU form.

The analysis is checked on hand-made functions whose loops, FLOPs and
scatters/sorts are known by construction, then run on the tiny models,
where it guards the shape the GPU needs: no sequential loop in local
matching, no scatter and no sort in CFBI's step, K + 1 object slots.
"""

import os
import sys

import jax
import jax.numpy as jnp
import pytest

from cfbi_jax import backend
from tests import parity_fixtures as pf

sys.path.insert(0, os.path.join(pf.REPO, 'bench'))
import step_cost  # pylint: disable=g-import-not-at-top,wrong-import-position


def _cost(fn, *shapes):
  avals = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  lowered = jax.jit(fn).trace(*avals).lower(lowering_platforms=('cuda',))
  return step_cost.module_cost(lowered.compiler_ir('stablehlo'))


def test_loops_and_flops_of_a_hand_made_function():
  """A scan of 7 trips around a map of 3 trips: each op counts once per
  trip of every loop around it, and per named stage."""

  def conv(x, w):  # [1, 8, 8, 4] * [3, 3, 4, 6] -> [1, 8, 8, 6]
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )

  def fn(a, b, x, w):
    with jax.named_scope('embed'):
      once = a @ b.T  # 2 * 5 * 4 * 6

    def outer(carry, _):
      with jax.named_scope('global_matching'):
        carry = carry @ b @ b.T  # 2 * (5*6*4 + 5*4*6)

        def inner(row):
          with jax.named_scope('local_matching'):
            y = conv(x + row.sum(), w)  # 2 * 64 * 6 * 36
            top = jax.lax.top_k(y.reshape(8, 48), 5)[0].sum()  # 384 values
            return jnp.sort(y.ravel())[0] + jnp.zeros(3).at[1].set(1.0)[1] + top

        return carry, jax.lax.map(inner, carry[:3])

    _, inner_out = jax.lax.scan(outer, once, None, length=7)
    return once, inner_out

  cost = _cost(fn, (5, 6), (4, 6), (1, 8, 8, 4), (3, 3, 4, 6))
  assert cost['loop_iters'] == 7 + 7 * 3
  assert sorted((l['trips'], l['weight']) for l in cost['loops']) == [
      (3, 7),
      (7, 1),
  ]
  assert cost['unknown_loops'] == 0
  assert cost['sorts'] == 21 and cost['scatters'] == 21
  assert cost['top_k'] == 21 and cost['top_k_values'] == 21 * 8 * 48
  gflop = cost['gflop']
  assert gflop['embed'] * 1e9 == pytest.approx(2 * 5 * 4 * 6)
  assert gflop['global_matching'] * 1e9 == pytest.approx(
      7 * 2 * (5 * 4 * 6 + 5 * 6 * 4)
  )
  assert gflop['local_matching'] * 1e9 == pytest.approx(21 * 2 * 64 * 6 * 36)
  assert cost['gflop_total'] == pytest.approx(sum(gflop.values()))


def test_depthwise_and_batched_dot_flops():
  def fn(x, w, p, q):
    y = jax.lax.conv_general_dilated(
        x,
        w,
        (2, 2),
        ((1, 1), (1, 1)),
        feature_group_count=4,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )  # [2, 5, 5, 4]
    return y, jnp.einsum('bij,bjk->bik', p, q)

  cost = _cost(fn, (2, 9, 9, 4), (3, 3, 1, 4), (3, 4, 5), (3, 5, 6))
  # Depthwise: 9 taps of 1 input channel per output; batched: 3 x 4x5x6.
  assert cost['gflop_total'] * 1e9 == pytest.approx(
      2 * (2 * 5 * 5 * 4) * 9 + 2 * 3 * 4 * 6 * 5
  )
  assert cost['loop_iters'] == 0


def test_tracing_for_the_gpu_on_a_cpu():
  assert backend.is_cpu()
  with backend.tracing_for('cuda'):
    assert not backend.is_cpu()
    with backend.tracing_for('cpu'):
      assert backend.is_cpu()
    assert not backend.is_cpu()
  assert backend.is_cpu()
  with pytest.raises(ValueError):
    with backend.tracing_for('gpu0'):
      pass


@pytest.mark.parametrize(
    'variant,objects', [('tiny_cfbi', 2), ('tiny_cfbip', 4)]
)
def test_tiny_steps_have_the_gpu_shape(variant, objects):
  """The step a GPU runs: K + 1 slots, local matching without a loop,
  global matching without a sort or a scatter."""
  row = step_cost.step_cost(variant, (96, 128), objects, memory=False)
  assert row['slots'] == objects + 1
  assert row['sorts'] == 0 and row['scatters'] == 0
  assert row['unknown_loops'] == 0
  assert all(l['stage'] == 'global_matching' for l in row['loops'])
  assert row['gflop']['local_matching'] > 0
  assert row['gflop']['embed'] > 0 and row['gflop']['ensembler'] > 0
  line = step_cost.summary_line(row)
  assert line.startswith(
      f'step cost: model={variant} size=97x129 '
      f'objects={objects} slots={objects + 1} gflop='
  )
  assert line.endswith('temp_mb=na args_mb=na')


def test_compiled_memory_of_the_gpu_form():
  one = step_cost.step_cost('tiny_cfbi', (96, 128), 1)
  three = step_cost.step_cost('tiny_cfbi', (96, 128), 3)
  assert one['args_mb'] == pytest.approx(three['args_mb'])
  # Two more slots run two more ensembler passes, held at once.
  assert three['temp_mb'] > one['temp_mb'] > 0
  assert three['gflop']['ensembler'] == pytest.approx(
      2 * one['gflop']['ensembler'], rel=0.01
  )

"""Tests for `cfbi_jax.host_threads`: order, errors, early stop."""

import threading
import time

import pytest

from cfbi_jax import host_threads


def test_prefetch_keeps_order_and_runs_ahead():
  produced = []

  def items():
    for i in range(6):
      produced.append(i)
      yield i

  it = host_threads.prefetch(items(), depth=2)
  assert next(it) == 0
  deadline = time.time() + 5
  while len(produced) < 3 and time.time() < deadline:
    time.sleep(0.01)
  # The reader is ahead of the consumer while it holds item 0.
  assert len(produced) >= 3
  assert list(it) == [1, 2, 3, 4, 5]


def test_prefetch_reraises_at_the_failing_item():
  def items():
    yield 1
    raise OSError('frame 1 unreadable')

  it = host_threads.prefetch(items())
  assert next(it) == 1
  with pytest.raises(OSError, match='frame 1 unreadable'):
    next(it)


def test_prefetch_closed_early_stops_its_thread():
  before = threading.active_count()
  it = host_threads.prefetch(iter(range(10**6)), depth=2)
  assert next(it) == 0
  it.close()
  assert threading.active_count() == before


def test_writer_runs_jobs_in_order_and_waits_for_them():
  done = []
  with host_threads.BackgroundWriter(max_pending=2) as writer:
    for i in range(20):
      writer.submit(lambda i=i: (time.sleep(0.001), done.append(i)))
  assert done == list(range(20))


def test_writer_reraises_the_first_error_and_skips_the_rest():
  done = []

  def fail():
    raise OSError('disk full: out/a.png')

  with pytest.raises(OSError, match='disk full'):
    with host_threads.BackgroundWriter() as writer:
      writer.submit(done.append, 1)
      writer.submit(fail)
      writer.submit(done.append, 2)
  assert done == [1]

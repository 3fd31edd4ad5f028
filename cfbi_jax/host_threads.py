"""Host-side overlap for the evaluation loop: read ahead, write behind.

The device runs one frame while the host decodes the next one
(`prefetch`) and writes the previous one's outputs (`BackgroundWriter`), so
the only wait between frames is the device itself. Used by
`inference.videos.VideoPropagator` (frames) and `evaluation.segment_sequence`
(PNG, probability and overlay files).
"""

import queue
import threading
from typing import Any, Callable, Iterable, Iterator, List

_DONE = object()


def prefetch(iterable: Iterable[Any], depth: int = 2) -> Iterator[Any]:
  """Iterates `iterable` on a daemon thread, `depth` items ahead.

  Items arrive in order; an exception raised by the iterable is re-raised
  here, at the item where it happened. Stopping early (closing the
  generator) stops the thread after at most `depth` more items.

  Args:
    iterable: any iterable (e.g. a generator that decodes frames).
    depth: how many items may wait, decoded, for the consumer.

  Yields:
    The items of `iterable`.
  """
  items = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def produce():
    try:
      for item in iterable:
        if stop.is_set():
          return
        items.put((item, None))
    except BaseException as error:  # pylint: disable=broad-except
      items.put((None, error))
      return
    items.put((_DONE, None))

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item, error = items.get()
      if error is not None:
        raise error
      if item is _DONE:
        return
      yield item
  finally:
    stop.set()
    while thread.is_alive():  # Unblock a producer waiting on a full queue.
      try:
        items.get(timeout=0.05)
      except queue.Empty:
        pass


class BackgroundWriter:
  """Runs write jobs in order on one daemon thread.

  Use as a context manager: `submit(fn, *args)` queues a job (blocking when
  `max_pending` jobs wait, which bounds the host memory they hold); leaving
  the block waits for every job and re-raises the first error. After an
  error the remaining jobs are skipped, and `submit` raises it at once.
  """

  def __init__(self, max_pending: int = 8):
    self._jobs = queue.Queue(maxsize=max_pending)
    self._errors: List[BaseException] = []
    self._thread = threading.Thread(target=self._work, daemon=True)
    self._thread.start()

  def _work(self) -> None:
    while True:
      job = self._jobs.get()
      if job is _DONE:
        return
      if self._errors:
        continue
      fn, args = job
      try:
        fn(*args)
      except BaseException as error:  # pylint: disable=broad-except
        self._errors.append(error)

  def submit(self, fn: Callable[..., Any], *args: Any) -> None:
    """Queues `fn(*args)`."""
    if self._errors:
      raise self._errors[0]
    self._jobs.put((fn, args))

  def close(self) -> None:
    """Waits for every queued job; re-raises the first error."""
    if self._thread.is_alive():
      self._jobs.put(_DONE)
      self._thread.join()
    if self._errors:
      raise self._errors[0]

  def __enter__(self) -> 'BackgroundWriter':
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None:
      # Already failing: finish what is queued, but report the first error.
      try:
        self.close()
      except BaseException:  # pylint: disable=broad-except
        pass
      return
    self.close()

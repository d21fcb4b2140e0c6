"""`protocol.http.settle_heap`: what a service holds at startup leaves the garbage collector's
scans (no full-collection stalls of the event loop), and what it makes later is still collected."""

import subprocess
import sys

SCRIPT = """
import gc, weakref
from protocol.http import settle_heap

class Node:
    pass

startup = [Node() for _ in range(50_000)]     # what a service loads before it serves
cycle = Node(); cycle.me = cycle              # startup garbage: collected, not frozen
gone = weakref.ref(cycle); del cycle
settle_heap()
assert gone() is None, "startup garbage was frozen"
frozen = gc.get_freeze_count()
assert frozen >= 50_000, frozen
tracked = len(gc.get_objects())
assert tracked < 50_000, tracked              # a full collection no longer walks them
later = Node(); later.me = later              # made while serving: still collected
ref = weakref.ref(later); del later
gc.collect()
assert ref() is None, "a cycle made after settle_heap was not collected"
print("ok", frozen, tracked)
"""


def test_startup_objects_leave_the_collector_and_later_garbage_is_still_collected():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr

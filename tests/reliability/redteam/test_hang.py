"""Hang classes: a busy loop, a sleep, a memory bomb, a fork bomb. Each ends within its limit, the whole tree
killed, with the stage named."""

import pytest

from attacks import arch, plugin, run_attack

pytestmark = pytest.mark.slow  # each waits for a limit to fire (25-150 s)

# (id, code, accepted stages, wall-time limit): the bombs get time to reach their own limit first
CASES = [
    ("busy-loop", plugin(init="while True:\n    pass"), ("timeout", "cpu"), 25),
    ("sleep", plugin(init="imp('time').sleep(3600)"), ("timeout",), 25),
    ("memory-bomb", plugin(init="hog = []\nwhile True:\n    hog.append(torch.ones(64 * 1024 * 1024))"),
     ("memory", "forward_backward"), 150),
    ("process-bomb", plugin(init="""
while True:
    OS.posix_spawn("/usr/bin/sleep", ["/usr/bin/sleep", "60"], {})"""), ("forward_backward",), 150),
]


@pytest.mark.parametrize("cid,code,stages,wall", CASES, ids=[c[0] for c in CASES])
def test_hanging_candidates_end_within_the_limit(path, tiny_world, tmp_path, cid, code, stages, wall):
    import time

    started = time.monotonic()
    v = run_attack(path, tiny_world, tmp_path, arch(code), wall_seconds=wall,
                   config={"training": {"epochs": 1, "device": "cpu", "cpu_threads": 1}})
    assert not v.ok and v.stage in stages, (v.stage, v.reason)
    if cid == "process-bomb":
        assert "Operation not permitted" in v.reason, v.reason
    assert time.monotonic() - started < wall * 2 + 120

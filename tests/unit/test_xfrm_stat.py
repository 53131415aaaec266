"""The XfrmInTmplMismatch watcher: parsing /proc/net/xfrm_stat and reporting rises."""

from __future__ import annotations

import asyncio

from vpnd.kernel import xfrm_stat
from vpnd.core.events import XfrmInTmplMismatch

SAMPLE = """XfrmInError             \t0
XfrmInTmplMismatch      \t{n}
XfrmInNoPols            \t3
"""


def test_parse_reads_every_counter():
    assert xfrm_stat.parse(SAMPLE.format(n=7)) == {
        "XfrmInError": 0, "XfrmInTmplMismatch": 7, "XfrmInNoPols": 3}
    assert xfrm_stat.parse("garbage\nXfrmInTmplMismatch x\n") == {}


def test_this_hosts_counter_reads():
    assert xfrm_stat.read() is not None     # /proc/net/xfrm_stat exists on this machine kind


def test_rises_are_reported_with_their_delta(tmp_path):
    path = tmp_path / "xfrm_stat"
    path.write_text(SAMPLE.format(n=10))
    samples = []
    w = xfrm_stat.XfrmStatWatcher(lambda e: None, on_sample=samples.append, path=path)
    w.last = xfrm_stat.read(path)               # the baseline: earlier rises are history
    assert w.sample() is None
    path.write_text(SAMPLE.format(n=14))
    assert w.sample() == XfrmInTmplMismatch(14, 4)
    assert w.sample() is None                   # no rise, no event
    path.write_text(SAMPLE.format(n=2))         # a reset (netns re-created): new baseline
    assert w.sample() is None
    path.write_text(SAMPLE.format(n=3))
    assert w.sample() == XfrmInTmplMismatch(3, 1)
    assert samples == [10, 14, 14, 2, 3]


def test_the_watcher_polls_until_stopped(tmp_path):
    path = tmp_path / "xfrm_stat"
    path.write_text(SAMPLE.format(n=0))
    rises: list[XfrmInTmplMismatch] = []

    async def main():
        w = xfrm_stat.XfrmStatWatcher(rises.append, path=path, interval=0.01)
        assert w.start()
        path.write_text(SAMPLE.format(n=5))
        for _ in range(200):
            if rises:
                break
            await asyncio.sleep(0.01)
        await w.stop()

    asyncio.run(main())
    assert rises == [XfrmInTmplMismatch(5, 5)]


def test_a_missing_counter_is_reported_not_raised(tmp_path):
    async def main():
        w = xfrm_stat.XfrmStatWatcher(lambda e: None, path=tmp_path / "absent")
        return w.start()

    assert asyncio.run(main()) is False

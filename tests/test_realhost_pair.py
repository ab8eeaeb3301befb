"""Issue 18: a default Linux host (Debian's kernel under qemu, Debian's nvme-cli) finds a
hot-standby pair through discovery and referrals, builds one multipath head over both
paths, and runs fio randrw with crc32c verify while the active member is SIGKILLed again
and again (alternating between the two processes).

Asserts: 0 I/O errors, 0 verify failures, the worst completion latency after each kill
<= 100 ms, both paths live again within reconnect_delay + 2 s of each kill. The pair is
tests/pair_lab.py (embedded targets, or real nvmf_tgt when $SPDK_NVMF_TGT is set); the
supervisor's pair mode replaces only the ``pair`` fixture.

    .venv/bin/python -m pytest -q -s tests/test_realhost_pair.py          # embedded pair
    SPDK_NVMF_TGT=/path/nvmf_tgt SPDK_NVMF_TGT_ARGS="-m 0x1 --num-trace-entries 0
        --no-huge -s 1024" .venv/bin/python -m pytest -q -s tests/test_realhost_pair.py

$PHX_PAIR_KILLS sets the number of kills (20). The 100 ms bound is the issue's; under TCG
on a busy 2-core machine some kills exceed it (the report printed with -s shows each
kill's numbers). $PHX_PAIR_WORST_MS changes the bound explicitly; it is never relaxed
here.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import realhost
from tests.netlab import why_no_netns
from tests.pair_lab import CNTLID, PORTS, PairLab, pair_lab
from tests.realhost_pair import RECONNECT_DELAY_DEFAULT, format_report, run_pair

pytestmark = [pytest.mark.realhost, pytest.mark.slow,
              pytest.mark.skipif(realhost.unavailable_reason() is not None,
                                 reason=f"qemu cannot run: {realhost.unavailable_reason()}"),
              pytest.mark.skipif(why_no_netns() is not None,
                                 reason=f"no network namespaces: {why_no_netns()}")]
KILLS = int(os.environ.get("PHX_PAIR_KILLS", "20"))
WORST_MS = float(os.environ.get("PHX_PAIR_WORST_MS", "100"))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[PairLab]:
    with pair_lab(tmp_path) as lab:
        yield lab


def test_linux_host_rides_through_sigkills_of_the_active(pair: PairLab) -> None:
    rep = run_pair(pair, KILLS)
    print(f"pair ({pair.kind}) report:\n{format_report(rep)}")
    run = rep.run
    assert run is not None and run.first("done") is not None, "\n".join(run.console[-40:]
                                                                        if run else [])
    assert rep.errors == [], rep.errors
    # Discovery found both paths (one through the referral), and the kernel made ONE head.
    nvm = {(m.fields["trsvcid"]) for m in run.all("discovered") if m.fields["kind"] == "nvm"}
    assert nvm == {str(PORTS["A"][0]), str(PORTS["B"][0])}
    assert (rep.multipath["subsystems"], rep.multipath["paths"]) == ("1", "2"), rep.multipath
    assert "," not in rep.multipath["heads"]
    assert sorted(int(p["cntlid"]) for p in rep.paths_start) == [CNTLID["A"][0],
                                                                 CNTLID["B"][0]]
    # The kills happened, alternating between the two processes.
    assert len(rep.kills) == KILLS, format_report(rep)
    assert [k.member for k in rep.kills] == ["A", "B"] * (KILLS // 2) + ["A"] * (KILLS % 2)
    assert (rep.fio["rc"], rep.fio["err"], rep.fio["verify_failures"]) == ("0", "0", "0"), \
        [m.text for m in run.all("fio-line")]
    assert rep.ios > 0
    assert all(k.path_lost_ms is not None for k in rep.kills), format_report(rep)
    slowest = max(k.worst_ms for k in rep.kills)
    assert slowest <= WORST_MS, f"worst latency per kill {slowest} ms\n{format_report(rep)}"
    late = [i for i, k in enumerate(rep.kills, 1) if k.both_live_ms is None
            or k.both_live_ms > (RECONNECT_DELAY_DEFAULT + 2) * 1000]
    assert late == [], f"kills {late}: both paths not live again in time\n{format_report(rep)}"
    assert all(p["state"] == "live" for p in rep.paths_end), rep.paths_end
    assert sorted(p["ana_state"] for p in rep.paths_end) == ["non-optimized", "optimized"]

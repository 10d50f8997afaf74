"""The bench report (never a benchmark assertion: only that the table and chart are made)."""

from __future__ import annotations

from bench import report


def results():
    def scen(tcp1):
        return {"samples": [], "summary": {"tcp1_gbps": {"median": tcp1, "min": tcp1 - 1, "max": tcp1 + 1, "n": 3},
                                           "rtt_p50_ms": {"median": 0.1, "min": 0.1, "max": 0.2, "n": 3}}}
    return {"date": "2026-11-26T00:00:00+00:00", "command": "python -m bench", "rounds": 3, "seconds": 10,
            "machine": {"cpu": "test", "cores": "2", "kernel": "6", "python": "3.11"},
            "scenarios": {"kernel": scen(16.0), "vxland": scen(8.0)}}


def test_markdown_has_ratios():
    md = report.markdown(results())
    assert "| TCP 1 stream (Gbit/s) | 16.00 (15.00–17.00) | 8.00 (7.00–9.00) ×0.50 |" in md
    assert "python -m bench" in md


def test_chart_is_a_png(tmp_path):
    path = tmp_path / "c.png"
    report.chart(results(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_free_search_finds_a_rate_above_the_flood_figure(monkeypatch):
    """The loss-free bisection runs up to the rate offered under the flood, not the rate
    received: a path that carries 200k pps without loss but delivers only 100k under a flood
    (its receiver starved) is reported near 200k. A fake iperf3: pure logic, no lab."""
    from bench import measure

    offered = []

    def fake_iperf3(lab, client, server, seconds, streams=1, udp_rate=None, length=None):
        pps = int(udp_rate) / (64 * 8)
        offered.append(pps)
        lost = 0.0 if pps <= 200_000 else 5.0
        return measure.Iperf(int(udp_rate), 0, seconds, lost, int(pps * seconds * (1 - lost / 100))), {}

    monkeypatch.setattr(measure, "iperf3", fake_iperf3)
    best = measure.udp_lossless_pps(None, None, None, 3, ceiling_pps=700_000, steps=7)
    assert 194_000 <= best <= 200_000
    assert max(offered) <= 700_000 and len(offered) == 7

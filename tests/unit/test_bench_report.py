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

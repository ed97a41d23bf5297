"""The server-rendered bar charts (config.admin_charts), used by the treasury dashboard and
bench/pipeline.py's timeline."""

from __future__ import annotations

from config.admin_charts import Bucket, bar_chart_svg


def test_the_total_is_shown_only_for_values_that_add_up():
    buckets = [Bucket("0s", 120), Bucket("1s", 80)]
    summed = bar_chart_svg(title="Executions per second", buckets=buckets)
    assert "total 200" in summed
    latency = bar_chart_svg(title="p95 latency", buckets=buckets,
                            value_text=lambda v: f"{v} ms", show_total=False)
    assert "total" not in latency
    assert ">120 ms</text>" in latency  # the peak labels the axis


def test_an_empty_or_all_zero_series_draws_an_empty_axis():
    for buckets in ([], [Bucket("0s", 0), Bucket("1s", 0)]):
        svg = bar_chart_svg(title="Nothing yet", buckets=buckets)
        assert svg.startswith("<svg") and "total 0" in svg

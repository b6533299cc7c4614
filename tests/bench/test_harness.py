"""The benchmark harness's own judgement: what counts as overshooting a
rate limit, and how the table turns runs into medians and verdicts."""

from bench.common import Row
from bench.ratelimit import ledger_overshoot, overshoot
from bench.run import table_rows

# (seconds since the start, messages claimed then), for a 36,000/h limit:
# the spread share is 600 a minute.


def test_claims_within_each_minutes_share_do_not_overshoot() -> None:
    events = [(0.0, 600), (60.0, 600), (125.0, 600)]
    assert overshoot(events, spread=True) == 0
    assert ledger_overshoot(events) == 0


def test_a_rolling_minute_across_two_calendar_minutes_counts_as_overshoot() -> None:
    # Each calendar minute holds 600, but 50 s..110 s holds 1,200.
    events = [(50.0, 600), (61.0, 600)]
    assert ledger_overshoot(events) == 0
    assert overshoot(events, spread=True) == 600


def test_a_minute_over_its_share_overshoots_on_both_measures() -> None:
    events = [(1.0, 600), (2.0, 100)]
    assert ledger_overshoot(events) == 100
    assert overshoot(events, spread=True) == 100


def test_without_spreading_only_the_hourly_limit_counts() -> None:
    assert overshoot([(0.0, 30_000), (10.0, 6_000)], spread=False) == 0
    assert overshoot([(0.0, 30_000), (10.0, 6_001)], spread=False) == 1


ROW = Row(
    figure="Outbound",
    unit="msg/s",
    herald="herald",
    reference="ref",
    reference_label="smtp-source",
    target=">= 10 x ref",
    met=lambda h, r: r is not None and h >= 10 * r,
)


def run(herald: float | None, ref: float | None) -> dict:
    return {"figures": {"herald": herald, "ref": ref}, "notes": []}


def test_the_table_shows_medians_their_ratio_and_the_verdict() -> None:
    runs = [run(900, 100), run(1200, 90), run(1000, 110)]
    [line] = table_rows([ROW], runs, None)
    assert line == [
        "Outbound",
        "1,000 msg/s",
        "100 (smtp-source)",
        "10.00",
        ">= 10 x ref",
        "yes",
    ]


def test_a_missing_figure_is_na_not_a_number() -> None:
    [line] = table_rows([ROW], [run(None, 100)], None)
    assert line[1] == "n/a"
    assert line[5] == "n/a"


def test_a_failed_benchmark_says_error() -> None:
    [line] = table_rows([ROW], [], "exit status 1")
    assert line[1] == "error"
    assert line[5] == "no"

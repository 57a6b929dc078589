"""The time a training run still needs, from its epoch rows, and how a span of time is written."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smoothcompress.study.training import duration, time_left
from smoothcompress.study.training.eta import ETA_EPOCHS

times = st.lists(st.tuples(st.floats(0, 1e4), st.floats(0, 1e3)), min_size=1, max_size=12)


@given(times=times, more=st.integers(0, 40))
def test_the_time_left_is_the_median_of_the_last_epochs_times_the_epochs_to_go(times, more):
    history = [{"epoch": i + 1, "seconds": s, "eval_seconds": e} for i, (s, e) in enumerate(times)]
    recent = sorted(s + e for s, e in times[-ETA_EPOCHS:])
    median = (
        recent[len(recent) // 2] if len(recent) % 2 else (recent[len(recent) // 2 - 1] + recent[len(recent) // 2]) / 2
    )
    assert time_left(history, len(history) + more) == pytest.approx(median * more)


def test_one_paused_epoch_does_not_lead_the_estimate():
    history = [{"epoch": e, "seconds": s} for e, s in [(1, 60.0), (2, 3600.0), (3, 60.0)]]
    assert time_left(history, 13) == 600.0


def test_no_time_is_left_before_the_first_epoch_or_after_the_last():
    assert time_left([], 10) == 0.0
    assert time_left([{"epoch": e, "seconds": 5.0} for e in (1, 2, 3)], 3) == 0.0
    assert time_left([{"epoch": 1, "seconds": 5.0}], 3) == 10.0  # rows of older runs may lack eval_seconds
    assert time_left([{"epoch": 1, "seconds": None}, {"epoch": 2}], 4) == 0.0  # no row records a time


def test_the_epochs_left_count_from_the_last_row():
    assert time_left([{"epoch": 5, "seconds": 10.0, "eval_seconds": 2.0}], 8) == 36.0


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0 s"), (44.6, "45 s"), (59.6, "1 min"), (720, "12 min"), (3569, "59 min"), (3570, "1 h 00 min"),
     (11100, "3 h 05 min"), (90000, "25 h 00 min"), (-1, "—"), (float("nan"), "—"), (float("inf"), "—")],
)  # fmt: skip
def test_a_span_of_time_reads_as_a_person_writes_it(seconds, text):
    assert duration(seconds) == text

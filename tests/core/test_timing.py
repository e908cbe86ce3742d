from adaptive_exit.runtime.timing import median_time


def test_median_time_warms_up_once_then_times_every_repeat():
    calls = []
    seconds, result = median_time(lambda: calls.append("timed") or len(calls), repeats=3, warmup=lambda: calls.append("warm"))
    assert calls == ["warm", "timed", "timed", "timed"]
    assert result == 4 and seconds >= 0
    calls.clear()
    median_time(lambda: calls.append("x"), repeats=0)  # no warm-up given: fn warms up; at least one timed call
    assert calls == ["x", "x"]

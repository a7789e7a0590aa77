"""Rate-limit primitives driven by a fake clock (protocol.md §5.7, §8, checklist item 82)."""

from __future__ import annotations

import pytest

from realtime_channels.protocol.limits import FixedWindow, RollingRate, TokenBucket

# --- FixedWindow: per-channel presence window (§5.7, item 82) ---------------------------


def test_five_allowed_sixth_refused_within_30s() -> None:
    w = FixedWindow(limit=5, window=30.0)
    assert [w.hit(100.0 + i) for i in range(5)] == [True] * 5
    assert w.hit(129.999) is False


def test_allowed_again_in_next_window() -> None:
    w = FixedWindow(limit=5, window=30.0)
    for _ in range(5):
        assert w.hit(0.0)
    assert not w.hit(10.0)
    # Window opened at t=0 and is over at t=30: a fresh window with a fresh budget.
    assert [w.hit(30.0) for _ in range(5)] == [True] * 5
    assert not w.hit(59.9)
    assert w.hit(60.0)


def test_window_is_anchored_at_first_hit_not_at_clock_zero() -> None:
    w = FixedWindow(limit=2, window=30.0)
    assert w.hit(25.0)
    assert w.hit(31.0)  # still the window opened at 25
    assert not w.hit(54.9)
    assert w.hit(55.0)


def test_refused_hits_do_not_consume_next_window() -> None:
    w = FixedWindow(limit=1, window=10.0)
    assert w.hit(0.0)
    assert not w.hit(1.0)
    assert not w.hit(9.0)
    assert w.hit(10.0)


def test_zero_limit_refuses_everything() -> None:
    w = FixedWindow(limit=0, window=1.0)
    assert not w.hit(0.0)
    assert not w.hit(5.0)


def test_clock_stepping_back_stays_in_window() -> None:
    w = FixedWindow(limit=2, window=30.0)
    assert w.hit(100.0)
    assert w.hit(90.0)
    assert not w.hit(95.0)


@pytest.mark.parametrize(("limit", "window"), [(-1, 1.0), (1, 0.0), (1, -5.0)])
def test_fixed_window_rejects_bad_config(limit: int, window: float) -> None:
    with pytest.raises(ValueError):
        FixedWindow(limit, window)


# --- RollingRate: §8 rolling average --------------------------------------------------


def test_empty_rate_is_zero() -> None:
    assert RollingRate().rate(1234.0) == 0.0


def test_full_minute_average() -> None:
    r = RollingRate()
    # 10 events/s for 60 s, starting on a bucket boundary.
    for second in range(60):
        r.add(1000.0 + second, 10)
    assert r.rate(1059.5) == pytest.approx(10.0)


def test_rate_decays_to_zero_after_60s() -> None:
    r = RollingRate()
    for second in range(60):
        r.add(1000.0 + second, 6)
    assert r.rate(1059.0) == pytest.approx(6.0)
    # Each 5 s bucket that slides out removes 30 events (0.5 events/s of the average).
    assert r.rate(1060.0) == pytest.approx(6.0 * 55 / 60)
    assert r.rate(1085.0) == pytest.approx(6.0 * 30 / 60)
    # The last bucket [1055, 1060) is the only one left until it slides out at 1115.
    assert r.rate(1114.9) == pytest.approx(6.0 * 5 / 60)
    assert r.rate(1115.0) == 0.0
    assert r.rate(1200.0) == 0.0


def test_burst_slides_out_exactly_after_one_minute() -> None:
    r = RollingRate()
    r.add(0.0)  # start the clock
    r.add(100.0, 600)
    assert r.rate(100.0) == pytest.approx(600 / 60)
    assert r.rate(159.99) == pytest.approx(600 / 60)
    assert r.rate(160.0) == 0.0


def test_warm_up_averages_over_elapsed_buckets() -> None:
    r = RollingRate()
    r.add(0.0, 100)
    assert r.rate(0.0) == pytest.approx(100 / 5)
    assert r.rate(7.0) == pytest.approx(100 / 10)
    assert r.rate(59.0) == pytest.approx(100 / 60)
    assert r.rate(60.0) == 0.0


def test_add_after_idle_restarts_cleanly() -> None:
    r = RollingRate()
    r.add(0.0, 50)
    r.add(1000.0, 60)
    # The counter has been alive for far more than a minute: full-minute denominator.
    assert r.rate(1000.0) == pytest.approx(1.0)


def test_custom_buckets() -> None:
    r = RollingRate(buckets=2, bucket_seconds=1.0)
    r.add(10.0, 4)
    r.add(11.0, 2)
    assert r.rate(11.5) == pytest.approx(3.0)
    assert r.rate(12.0) == pytest.approx(1.0)
    assert r.rate(13.0) == 0.0


@pytest.mark.parametrize(("buckets", "seconds"), [(0, 5.0), (12, 0.0)])
def test_rolling_rate_rejects_bad_config(buckets: int, seconds: float) -> None:
    with pytest.raises(ValueError):
        RollingRate(buckets, seconds)


# --- TokenBucket ------------------------------------------------------------------------


def test_bucket_starts_full_and_refuses_beyond_burst() -> None:
    b = TokenBucket(rate=1.0, burst=3.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_refills_at_rate_capped_by_burst() -> None:
    b = TokenBucket(rate=2.0, burst=4.0)
    for _ in range(4):
        assert b.take(0.0)
    assert not b.take(0.0)
    assert b.take(0.5)  # 1 token after 0.5 s at 2/s
    assert not b.take(0.5)
    # A long idle period refills only up to the burst.
    assert [b.take(100.0) for _ in range(5)] == [True] * 4 + [False]


def test_bucket_failed_take_consumes_nothing() -> None:
    b = TokenBucket(rate=1.0, burst=2.0)
    assert not b.take(0.0, 3.0)
    assert b.take(0.0, 2.0)


def test_bucket_clock_stepping_back_does_not_refill() -> None:
    b = TokenBucket(rate=10.0, burst=1.0)
    assert b.take(50.0)
    assert not b.take(40.0)
    assert not b.take(50.0)
    assert b.take(50.1)


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 1.0), (1.0, -1.0)])
def test_bucket_rejects_bad_config(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_token_bucket_wait_tells_when_the_next_token_comes() -> None:
    bucket = TokenBucket(rate=10.0, burst=2.0)
    assert bucket.take(0.0) and bucket.take(0.0) and not bucket.take(0.0)
    assert bucket.wait(0.0) == pytest.approx(0.1)
    assert bucket.wait(0.05) == pytest.approx(0.05)
    assert bucket.wait(0.1) == 0.0
    assert bucket.take(0.1)

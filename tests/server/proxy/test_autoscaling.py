"""The RPS meter, the autoscaler's decisions (upstream's rules) and the rate limiter, on a given clock."""

from __future__ import annotations

from dstack.core.config_parser import parse_configuration
from dstack.server.proxy.autoscaling import RpsMeter, Scaler
from dstack.server.proxy.limits import RateLimiter


def _conf(replicas: str, scaling: str = "") -> object:
    text = f"type: service\nport: 8000\ncommands: [serve]\nreplicas: {replicas}\n{scaling}"
    return parse_configuration(text)


def test_meter_averages_over_its_window_and_forgets_what_left_it() -> None:
    meter = RpsMeter(60.0)
    for i in range(120):  # 2 per second for a minute
        meter.hit(1000.0 + i / 2)
    assert abs(meter.rate(1060.0) - 2.0) < 0.1
    assert meter.rate(1200.0) == 0.0


def test_scaler_follows_rps_with_the_delays_and_from_zero_at_once() -> None:
    conf = _conf("0..4", "scaling: {metric: rps, target: 10, scale_up_delay: 30s, scale_down_delay: 60s}")
    scaler = Scaler(current=0, time_scale=1.0)
    scaler.changed_at = 0.0
    assert scaler.desired(conf, 0.0, now=5.0) == 0
    assert scaler.desired(conf, 0.1, now=6.0) == 1  # a request waits: no delay from zero
    assert scaler.desired(conf, 35.0, now=20.0) == 1  # up, but not sooner than 30 s after the last change
    assert scaler.desired(conf, 35.0, now=37.0) == 4  # ceil(35 / 10) = 4
    assert scaler.desired(conf, 500.0, now=100.0) == 4  # never past the maximum
    assert scaler.desired(conf, 0.0, now=90.0) == 4  # down only after 60 s
    assert scaler.desired(conf, 0.0, now=98.0) == 0


def test_fixed_replicas_ignore_rps_and_time_scale_shortens_delays() -> None:
    assert Scaler(current=0, time_scale=1.0).desired(_conf("3"), 1000.0) == 3
    conf = _conf("1..2", "scaling: {metric: rps, target: 1, scale_up_delay: 100s}")
    scaler = Scaler(current=1, time_scale=0.01)
    scaler.changed_at = 0.0
    assert scaler.desired(conf, 5.0, now=0.5) == 1
    assert scaler.desired(conf, 5.0, now=1.5) == 2  # 100 s x 0.01


class _Limit:
    def __init__(self, prefix: str, rps: float, burst: int = 0, key: dict | None = None) -> None:
        self.prefix, self.rps, self.burst, self.key = prefix, rps, burst, key


def test_rate_limits_by_longest_prefix_and_key() -> None:
    limiter = RateLimiter([_Limit("/", 1000), _Limit("/api", 1, burst=1)])
    assert limiter.check("/api/x", "1.1.1.1", {}) is None
    assert limiter.check("/api/x", "1.1.1.1", {}) is None  # the burst
    wait = limiter.check("/api/x", "1.1.1.1", {})
    assert wait is not None and 0 < wait <= 1.0
    assert limiter.check("/api/x", "2.2.2.2", {}) is None  # another client, another bucket
    assert limiter.check("/other", "1.1.1.1", {}) is None
    by_header = RateLimiter([_Limit("/", 1, key={"type": "header", "header": "x-api-key"})])
    assert by_header.check("/", "1.1.1.1", {"x-api-key": "a"}) is None
    assert by_header.check("/", "2.2.2.2", {"x-api-key": "a"}) is not None
    assert by_header.check("/", "2.2.2.2", {"x-api-key": "b"}) is None

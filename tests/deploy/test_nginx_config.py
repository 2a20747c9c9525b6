"""Static checks of deploy/nginx: `nginx -t`, gixy, and the settings that make
SSE and WebSocket work behind it (the live behaviour is in test_nginx_live.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import Settings

from . import nginx_config as nc
from .conftest import find_nginx
from .manifests import deployed_settings, nginx_seconds

STREAM_LOCATIONS = [("/v1/patients/",), ("=", "/v1/ws")]
# The deploy's settings: the ConfigMap's NOTIFY_ values over the code's defaults.
DEPLOYED = deployed_settings()


@pytest.fixture(scope="module")
def config() -> nc.Config:
    return nc.load()


def nginx_test(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_nginx(), "-t", "-c", str(conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_nginx_t_accepts_the_shipped_config(config: nc.Config, tmp_path: Path) -> None:
    conf = nc.render_to(config, tmp_path, listen="127.0.0.1:8080", upstream="127.0.0.1:8000")
    result = nginx_test(conf)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_t_rejects_a_broken_config(config: nc.Config, tmp_path: Path) -> None:
    """Negative control: the check above can fail."""
    conf = nc.render_to(
        config,
        tmp_path,
        listen="127.0.0.1:8080",
        upstream="127.0.0.1:8000",
        overrides={("/v1/patients/",): {"proxy_buffering": ["sometimes"]}},
    )
    result = nginx_test(conf)
    assert result.returncode != 0
    assert "proxy_buffering" in result.stderr


def test_gixy_finds_no_issue() -> None:
    gixy = shutil.which("gixy") or str(Path(sys.executable).with_name("gixy"))
    if not Path(gixy).exists():
        pytest.fail("gixy not found: `pip install gixy-ng`", pytrace=False)
    # No --nginx-version: gixy would then flag CVEs by version number, but Debian
    # backports security fixes into 1.22.1 without changing it (false positives);
    # security updates come from `apt-get upgrade`, not from this config.
    result = subprocess.run(
        [gixy, str(nc.NGINX_DIR / nc.MAIN_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No issues found" in result.stdout


@pytest.mark.parametrize("where", STREAM_LOCATIONS, ids=["sse", "ws"])
def test_streams_are_neither_buffered_cached_nor_gzipped(
    config: nc.Config, where: tuple[str, ...]
) -> None:
    location = nc.location(config, *where)
    assert location.values_of("proxy_buffering") == [["off"]]
    assert location.values_of("proxy_cache") == [["off"]]
    assert location.values_of("gzip") == [["off"]]


def test_event_streams_are_not_in_gzip_types(config: nc.Config) -> None:
    http = nc.http_block(config)
    assert http.values_of("gzip") == [["on"]], "gzip is on for JSON; streams opt out"
    (types,) = http.values_of("gzip_types")
    assert "text/event-stream" not in types
    assert "*" not in types


@pytest.mark.parametrize("where", STREAM_LOCATIONS, ids=["sse", "ws"])
def test_stream_timeouts_are_well_above_the_heartbeat(
    config: nc.Config, where: tuple[str, ...]
) -> None:
    location = nc.location(config, *where)
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        (value,) = location.values_of(name)
        seconds = nginx_seconds(value[0])
        assert seconds >= 4 * DEPLOYED.heartbeat_s, f"{name} {value}"
        assert seconds > DEPLOYED.ws_ping_interval_s + DEPLOYED.ws_ping_timeout_s, name


def test_upstreams_get_http_1_1_everywhere(config: nc.Config) -> None:
    # Debian's nginx 1.22 would talk HTTP/1.0: no keep-alive, no WebSocket upgrade.
    assert nc.http_block(config).values_of("proxy_http_version") == [["1.1"]]
    for directive in nc.walk(nc.http_block(config).block or []):
        if directive.name == "proxy_http_version":
            assert directive.values == ["1.1"]


def test_websocket_location_upgrades(config: nc.Config) -> None:
    (upgrade_map,) = [
        d for d in nc.http_block(config).children("map") if d.values[0] == "$http_upgrade"
    ]
    assert upgrade_map.values[1] == "$connection_upgrade"
    assert upgrade_map.values_of("default") == [["upgrade"]]
    ws = nc.location(config, "=", "/v1/ws")
    headers = {v[0]: v[1] for v in ws.values_of("proxy_set_header")}
    assert headers["Upgrade"] == "$http_upgrade"
    assert headers["Connection"] == "$connection_upgrade"


def test_every_proxying_location_sets_its_headers(config: nc.Config) -> None:
    """proxy_set_header is not inherited once a location sets one: each must set all."""
    proxying = [
        loc for loc in nc.server_block(config).children("location") if loc.children("proxy_pass")
    ]
    assert len(proxying) == 3
    for loc in proxying:
        headers = {v[0] for v in loc.values_of("proxy_set_header")}
        assert {"Host", "X-Forwarded-For", "X-Forwarded-Proto", "Connection"} <= headers, loc.args
        assert loc.values_of("proxy_pass") == [["http://notify_backend"]]


def test_upstream_keepalive_ends_before_uvicorns(config: nc.Config) -> None:
    (upstream,) = nc.http_block(config).children("upstream")
    assert int(upstream.values_of("keepalive")[0][0]) > 0
    nginx_idle = nginx_seconds(upstream.values_of("keepalive_timeout")[0][0])
    # uvicorn must never close an idle connection nginx is about to reuse (502).
    assert nginx_idle < DEPLOYED.keepalive_timeout_s
    assert nginx_idle < Settings.model_fields["keepalive_timeout_s"].default


def test_worker_limits_are_sized_for_two_connections_per_stream(config: nc.Config) -> None:
    (events,) = [d for d in config.expanded() if d.name == "events"]
    connections = int(events.values_of("worker_connections")[0][0])
    (rlimit,) = [d for d in config.expanded() if d.name == "worker_rlimit_nofile"]
    # One fd per connection, plus logs, listen sockets and idle upstream keep-alives.
    assert int(rlimit.values[0]) >= connections
    # Each proxied stream holds two connections: size for thousands of streams.
    assert connections // 2 >= 5000
    (shutdown,) = [d for d in config.expanded() if d.name == "worker_shutdown_timeout"]
    assert 0 < nginx_seconds(shutdown.values[0]) <= 60


def test_access_log_format_has_no_query_string_nor_credentials(config: nc.Config) -> None:
    http = nc.http_block(config)
    (log_format,) = http.children("log_format")
    name = log_format.values[0]
    text = "".join(log_format.values[1:])
    assert "$uri" in text
    for leaky in (
        "$request ",
        '$request"',
        "$request_uri",
        "$args",
        "$query_string",
        "$arg_",
        "$http_referer",
        "$http_authorization",
        "$http_cookie",
    ):
        assert leaky not in text, leaky
    # Every access log uses that format (a bare `access_log path;` would use
    # nginx's "combined", which logs $request with its query string).
    for directive in nc.walk([http]):
        if directive.name == "access_log" and directive.values[0] != "off":
            assert directive.values[1:2] == [name], directive.values


def test_server_tokens_off_and_metrics_not_public(config: nc.Config) -> None:
    assert nc.http_block(config).values_of("server_tokens") == [["off"]]
    metrics = nc.location(config, "=", "/metrics")
    assert metrics.values_of("return") == [["404"]]


def test_client_side_keepalive_outlives_the_alb_idle_timeout(config: nc.Config) -> None:
    from .manifests import alb_attributes

    alb_idle = int(alb_attributes("load-balancer-attributes")["idle_timeout.timeout_seconds"])
    keepalive = nginx_seconds(nc.http_block(config).values_of("keepalive_timeout")[0][0])
    # The ALB must close idle connections first, or it may reuse one nginx is closing.
    assert keepalive > alb_idle

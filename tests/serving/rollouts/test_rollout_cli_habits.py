"""`loraplane rollout`: `--url` before or after the action, and `status` while the database is down."""

from __future__ import annotations

import sqlalchemy as sa

from fakes.servers import wait_for
from serving.rollouts import cli
from tests.conftest import GatewayThread, free_port
from tests.serving.rollouts.test_rollout_gateway import FAST, QUICK, gateway_app, start, status, two_versions
from tests.serving.test_gateway_faults import dirs, engine

__all__ = ["dirs", "two_versions"]  # fixtures


def test_url_before_or_after_the_action() -> None:
    parse = cli.parser().parse_args
    assert parse(["start", "r", "--candidate", "bot@v2", "--url", "http://gw:1"]).url == "http://gw:1"
    assert parse(["--url", "http://gw:2", "status", "r"]).url == "http://gw:2"
    assert parse(["--url", "http://gw:2", "promote", "r", "--url", "http://gw:3"]).url == "http://gw:3"
    assert parse(["export", "r", "--out", "x"]).url == cli.GATEWAY_URL


def test_status_shows_paused_while_the_database_is_down(two_versions, postgres_server_url: str, capsys) -> None:
    from tests.serving.conftest import new_postgres_database

    url = new_postgres_database(postgres_server_url)
    name = sa.make_url(url).database
    admin = sa.create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")

    def connections(allow: bool) -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}'))
            if not allow:
                conn.execute(
                    sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
                )

    with (
        engine(**QUICK) as eng,
        GatewayThread(gateway_app(two_versions, [eng.url], **{"store.url": url, **FAST}), free_port()) as gw,
    ):
        assert start(gw.url, "r", candidate="bot@v2", steps=[50, 100], min_samples=10_000).status_code == 201
        connections(False)
        try:
            wait_for(lambda: status(gw.url, "r")["state"] == "paused")
            code = cli.main(["status", "r", "--url", gw.url])
        finally:
            connections(True)
    admin.dispose()
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("rollout r: paused at step 0 (weights: bot@v2 50%, bot@v1 50%)"), out
    assert "database is unreachable" in out and "unavailable until the control-plane database is back" in out

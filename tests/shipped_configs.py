"""A pytest plugin: fail the run when a shipped YAML under configs/ was loaded by no test.

It records every file that `trainer.config.load_config`, `serving.config.load_config` and
`loraplane.loop.spec.load_spec` load successfully in the test process; at the end of a whole-suite run (`pytest` or
`pytest -m "not slow"` with no file or -k selection) every configs/**/*.yaml must be among them.
LORAPLANE_CHECK_CONFIGS=1 enforces it on any run (to test the plugin itself).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
LOADED: set[Path] = set()


def shipped_configs() -> list[Path]:
    return sorted(p.resolve() for p in (REPO / "configs").rglob("*.y*ml"))


def _recording(load: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(load)
    def load_and_record(paths: Any = None, overrides: Any = None) -> Any:
        cfg = load(paths, overrides)
        for path in [paths] if isinstance(paths, str | Path) else list(paths or []):
            LOADED.add(Path(path).resolve())
        return cfg

    return load_and_record


def _recording_spec(load: Callable[[Path], Any]) -> Callable[[Path], Any]:
    """The same for a loader of one file (loraplane.loop.spec.load_spec)."""

    @functools.wraps(load)
    def load_and_record(path: Path) -> Any:
        spec = load(path)
        LOADED.add(Path(path).resolve())
        return spec

    return load_and_record


def pytest_configure(config: pytest.Config) -> None:
    import serving.config
    import trainer.config

    trainer.config.load_config = _recording(trainer.config.load_config)
    serving.config.load_config = _recording(serving.config.load_config)
    import loraplane.loop.spec

    loraplane.loop.spec.load_spec = _recording_spec(loraplane.loop.spec.load_spec)


def _whole_suite(config: pytest.Config) -> bool:
    if os.environ.get("LORAPLANE_CHECK_CONFIGS") == "1":
        return True
    return (
        config.args_source == pytest.Config.ArgsSource.TESTPATHS
        and not getattr(config.option, "keyword", "")
        and getattr(config.option, "markexpr", "") in ("", "not slow")
        and not getattr(config.option, "lf", False)
        and not getattr(config.option, "exitfirst", False)
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _whole_suite(session.config) or session.testsfailed:
        return
    never = [str(p.relative_to(REPO)) for p in shipped_configs() if p not in LOADED]
    if never:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"shipped configs loaded by no test (load each with its load_config in a test): {', '.join(never)}"
        if reporter is not None:
            reporter.write_sep("=", message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

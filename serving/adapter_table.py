"""`loraplane adapters list`: every version in the registry, aligned, with which one is stable.

The stable pointer (what a bare adapter name serves) lives in the control-plane store; the list
reads it without migrating or creating anything. Where no pointer is recorded yet, the gateway
makes the first published version stable when it starts, so that version is marked `stable*`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from serving.config import ServingConfig
from serving.errors import ServingError
from serving.registry import AdapterRef, AdapterRegistry

HEADER = ("MODEL", "STABLE", "SERVABLE", "EVAL / PROBLEM")


def stable_pointers(cfg: ServingConfig) -> tuple[dict[str, str] | None, str]:
    """(adapter name -> stable version, or None when unreadable; a note saying why)."""
    import sqlalchemy as sa

    from serving.store import Store
    from serving.store.connect import safe_url, store_url

    url = store_url(cfg)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return {}, ""  # no gateway has run on this registry yet
    try:
        store = Store.open(cfg, run_migrations=False)
        try:
            return store.stable_versions(), ""
        finally:
            store.close()
    except (ServingError, sa.exc.SQLAlchemyError) as exc:
        reason = str(exc).splitlines()[0][:200]
        return None, f"stable versions unknown: the control-plane database {safe_url(url)} was not readable ({reason})"


Row = tuple[str, str, str, str]  # model, stable mark, servable, eval summary or problem


def rows(
    registry: AdapterRegistry, stable: dict[str, str] | None, summary: Callable[[dict], str]
) -> tuple[list[Row], bool]:
    """Table rows and whether some name has no recorded pointer (its first version is marked stable*)."""
    out: list[Row] = []
    implied = False
    for name in registry.names():
        versions = registry.versions(name)
        for version in versions:
            if stable is None:
                mark = "?"
            elif name in stable:
                mark = "stable" if stable[name] == version else ""
            else:
                mark = "stable*" if version == versions[0] else ""
                implied = implied or mark != ""
            try:
                servable, detail = "ok", summary(registry.validate(AdapterRef(name, version)))
            except ServingError as exc:
                servable, detail = "REJECTED", str(exc)
            out.append((f"{name}@{version}", mark, servable, detail))
    return out, implied


def table(registry: AdapterRegistry, cfg: ServingConfig, summary: Callable[[dict], str]) -> str:
    """The whole listing, columns aligned (the last, free-text column is not padded)."""
    stable, note = stable_pointers(cfg)
    body, implied = rows(registry, stable, summary)
    if not body:
        return f"no adapters in {cfg.registry.adapters_dir} (publish one: loraplane adapters publish DIR NAME@vN)"
    lines: list[Row] = [HEADER, *body]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER) - 1)]
    text = ["  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1]]).rstrip() for line in lines]
    if implied:
        text.append("stable*: no stable version recorded yet; the gateway makes the first published version stable")
    if note:
        text.append(note)
    return "\n".join(text)

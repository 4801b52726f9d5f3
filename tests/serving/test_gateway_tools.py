"""Tool fields of a chat request (serving/gateway/tools.py) and the engine's tool-call flags
(serving/engine.py): bad tools are a 400 naming the field; a parser/template mismatch is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.config import load_config
from serving.engines.process import EngineProcess, template_parser, tool_call_args
from serving.errors import BadRequest, ConfigError
from serving.gateway.limits import apply_limits
from serving.gateway.protocol import CHAT

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "configs" / "templates" / "tool-pythonic.jinja"
TOOLS = json.loads((REPO / "data" / "tools" / "tools.json").read_text())


def body(**extra) -> dict:
    return {"model": "base", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS, **extra}


@pytest.mark.parametrize(
    ("extra", "param", "named"),
    [
        ({"tools": {"name": "x"}}, "tools", "non-empty list of function objects"),
        ({"tools": []}, "tools", "non-empty list"),
        ({"tools": ["get_weather"]}, "tools[0]", "'get_weather'"),
        ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools[0].function.name", "no `name`"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
            "tools[0].function.parameters",
            "'x'",
        ),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name", "'get_weather' twice"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "send_email"}}},
            "tool_choice.function.name",
            "'send_email'",
        ),
        ({"tool_choice": "sometimes"}, "tool_choice", "'sometimes'"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice", "needs `tools`"),
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls", "'no'"),
    ],
)
def test_bad_tool_fields_are_400_naming_the_field(extra: dict, param: str, named: str) -> None:
    with pytest.raises(BadRequest) as info:
        apply_limits(body(**extra), CHAT, load_config(None))
    assert info.value.param == param and named in info.value.message


def test_good_tool_fields_pass_unchanged() -> None:
    for extra in (
        {},
        {"tool_choice": "auto", "parallel_tool_calls": False},
        {"tool_choice": "none"},
        {"tool_choice": {"type": "function", "function": {"name": "create_reminder"}}},
        {"tools": None, "tool_choice": "none"},
    ):
        request = body(**extra)
        apply_limits(request, CHAT, load_config(None))
        assert request["tools"] == extra.get("tools", TOOLS)


def test_a_streamed_tool_call_delta_counts_as_text() -> None:
    chunk = {
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"name": "get_weather", "arguments": '{"city"'}}]},
            }
        ]
    }
    assert CHAT.chunk_text(chunk) == 'get_weather{"city"'
    assert CHAT.chunk_text({"choices": [{"delta": {"tool_calls": None, "content": None}}]}) == ""


def engine_cfg(**engine) -> object:
    return load_config(None, {f"engine.{k}": v for k, v in engine.items()})


def test_the_shipped_template_declares_its_parser() -> None:
    assert template_parser(TEMPLATE) == "pythonic"


def test_engine_gets_parser_and_template_flags(tmp_path: Path) -> None:
    cfg = engine_cfg(tool_call_parser="pythonic", chat_template=str(TEMPLATE))
    command = EngineProcess(cfg, tmp_path, "base", 0, tmp_path).command()
    at = command.index("--tool-call-parser")
    assert command[at + 1] == "pythonic" and "--enable-auto-tool-choice" in command
    assert command[command.index("--chat-template") + 1] == str(TEMPLATE.resolve())
    assert tool_call_args(engine_cfg()) == []  # nothing configured: no tool flags


@pytest.mark.parametrize(
    ("engine", "named"),
    [
        (
            {"tool_call_parser": "hermes", "chat_template": str(TEMPLATE)},
            ["'hermes'", "tool-pythonic.jinja", "'pythonic'"],
        ),
        ({"tool_call_parser": "pythonic"}, ["'pythonic'", "engine.chat_template", "got none"]),
        ({"chat_template": str(TEMPLATE)}, ["None", "tool-pythonic.jinja", "'pythonic'"]),
        ({"chat_template": "missing.jinja"}, ["missing.jinja", "not a file"]),
    ],
)
def test_parser_and_template_that_disagree_are_refused_naming_both(engine: dict, named: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        tool_call_args(engine_cfg(**engine))
    for word in named:
        assert word in str(info.value)


def test_the_tool_template_renders_plain_chats_as_the_base_does() -> None:
    """Why adapters trained with the base's own template may share an engine with tool adapters."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REPO / "models" / "smollm2-135m-instruct")
    chats = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
    ]
    for chat in chats:
        own = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert (
            tokenizer.apply_chat_template(
                chat, chat_template=TEMPLATE.read_text(), tokenize=False, add_generation_prompt=True
            )
            == own
        )


@pytest.mark.parametrize(
    ("trained", "engine_file", "refused"),
    [
        ("shipped", TEMPLATE, False),
        ("other", TEMPLATE, True),
        ("shipped", None, True),
        ("tokenizer", TEMPLATE, False),
        ("tokenizer", None, False),
    ],
)
def test_an_adapter_is_served_only_with_the_template_it_was_trained_with(
    tmp_path: Path, trained: str, engine_file, refused: bool
) -> None:  # noqa: ANN001
    import hashlib

    from serving.registry import AdapterRef, AdapterRegistry, BaseInfo, engine_template
    from tests.test_registry_contract import BASE_MANIFEST, make_adapter_dir

    src = make_adapter_dir(tmp_path, "tools", "v1", {}, BASE_MANIFEST["weights_sha256"])
    record = {
        "shipped": {"source": str(TEMPLATE), "sha256": hashlib.sha256(TEMPLATE.read_bytes()).hexdigest()},
        "other": {"source": "configs/templates/other.jinja", "sha256": "f" * 64},
        "tokenizer": {"source": "tokenizer", "sha256": "e" * 64},
    }[trained]
    manifest = json.loads((src / "loraplane-adapter.json").read_text())
    (src / "loraplane-adapter.json").write_text(json.dumps(manifest | {"chat_template": record}))
    base = BaseInfo(BASE_MANIFEST["name"], tmp_path, BASE_MANIFEST["weights_sha256"])
    registry = AdapterRegistry(
        tmp_path / "adapters", base, 16, engine_template(str(engine_file) if engine_file else None)
    )
    problems = [p for p in registry.problems(AdapterRef("tools", "v1"), path=src) if p.rule == "template"]
    assert bool(problems) is refused
    if refused:  # both templates named
        assert record["source"] in problems[0].message and (
            "tool-pythonic.jinja" in problems[0].message or "base's own" in problems[0].message
        )


def test_a_tool_call_answer_is_logged_as_its_calls() -> None:
    """A JSON answer with calls and no content is captured as the calls' JSON, not as empty text."""
    calls = [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    payload = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": calls}}]}
    assert json.loads(CHAT.answer_text(payload)) == calls
    assert CHAT.answer_text({"choices": [{"message": {"content": "hi", "tool_calls": calls}}]}) == "hi"

"""Issue 22 in the chart: the engines' tool-call parser and chat template, the gateway's response
cache and per-key token budgets, each wired from values into what the pods run."""

from __future__ import annotations

from helm_release import PREFIX, engine_args, load_gateway_config

TEMPLATE = "{%- for m in messages %}\n  <|im_start|>{{ m.role }}\t{{ m.content }}  \n{%- endfor %}\n"
TEMPLATE_PATH = "/etc/loraplane/chat-template/chat_template.jinja"
ADMIN = "a" * 64


def _mounts(release, doc, container: str) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in release.container(doc, container)["volumeMounts"]}


def test_tool_call_parser_and_chat_template_reach_engines_and_gateway(render):
    release = render({"engine": {"toolCallParser": "pythonic", "chatTemplate": TEMPLATE}})
    args = engine_args(release)
    assert args["--tool-call-parser"] == "pythonic" and "--enable-auto-tool-choice" in args
    assert args["--chat-template"] == TEMPLATE_PATH
    configmap = release.find("ConfigMap", f"{PREFIX}-chat-template")
    assert configmap["data"]["chat_template.jinja"] == TEMPLATE  # byte for byte: tabs, blanks, newlines
    for doc, container in ((release.engine, "engine"), (release.gateway, "gateway")):
        assert _mounts(release, doc, container)["/etc/loraplane/chat-template"] == "chat-template"
        volumes = {v["name"]: v for v in release.pod_spec(doc)["volumes"]}
        assert volumes["chat-template"]["configMap"]["name"] == f"{PREFIX}-chat-template"
        assert doc["spec"]["template"]["metadata"]["annotations"]["checksum/chat-template"]
    engine = release.serving_yaml()["engine"]
    assert engine["tool_call_parser"] == "pythonic" and engine["chat_template"] == TEMPLATE_PATH


def test_without_parser_or_template_nothing_is_added(releases):
    release = releases["default"]
    args = engine_args(release)
    assert not {"--tool-call-parser", "--enable-auto-tool-choice", "--chat-template"} & set(args)
    assert not [c for c in release.kinds("ConfigMap") if c["metadata"]["name"].endswith("-chat-template")]
    assert "tool_call_parser" not in release.serving_yaml()["engine"]
    assert "chat_template" not in release.serving_yaml()["engine"]


def test_cache_is_opt_in_and_maps_to_the_gateway_config(render, releases):
    assert "cache" not in releases["default"].serving_yaml()
    cache = {"enabled": True, "redisUrl": "redis://valkey.cache:6379/2", "ttlSeconds": 120, "maxEntries": 5000}
    assert render({"cache": cache}).serving_yaml()["cache"] == {
        "enabled": True,
        "redis_url": "redis://valkey.cache:6379/2",
        "ttl_s": 120,
        "max_entries": 5000,
    }
    assert render({"cache": {"enabled": True}}).serving_yaml()["cache"] == {"enabled": True}


def test_key_budgets_reach_the_gateway_config(render, tmp_path):
    keys = [
        {"name": "app", "sha256": "b" * 64, "budgets": {"tokensPerDay": 100000, "perModel": {"bot": 5000}}},
        {"name": "ops", "sha256": "c" * 64},
    ]
    values = {
        "gateway": {"auth": {"enabled": True, "adminKeySha256": ADMIN, "keys": keys}},
        "helmTest": {"enabled": False},
        "budgets": {"redisUrl": "redis://valkey:6379/3", "storeCacheSeconds": 1.5, "timeoutSeconds": 0.5},
    }
    cfg = load_gateway_config(render(values), tmp_path)  # the gateway's own config class reads it
    by_name = {k.name: k.budgets for k in cfg.auth.keys}
    assert by_name["app"].tokens_per_day == 100000 and by_name["app"].per_model == {"bot": 5000}
    assert by_name["ops"].tokens_per_day is None and by_name["ops"].per_model == {}
    assert (cfg.budgets.redis_url, cfg.budgets.store_cache_s, cfg.budgets.timeout_s) == (
        "redis://valkey:6379/3",
        1.5,
        0.5,
    )

"""API keys, allow-lists, admin key and the per-key token bucket."""

from __future__ import annotations

import pytest

from serving.config import AuthConfig, KeyConfig, load_config
from serving.errors import ConfigError, Forbidden, RateLimited, Unauthorized
from serving.gateway.auth import KeyStore, RateLimiter, hash_key


def store() -> KeyStore:
    return KeyStore(
        AuthConfig(
            enabled=True,
            admin_key_sha256=hash_key("admin-secret"),
            keys=[
                KeyConfig(name="app-a", sha256=hash_key("key-a"), models=["support-bot"], rate_limit_per_minute=2),
                KeyConfig(name="app-b", sha256=hash_key("key-b")),
            ],
        )
    )


def test_missing_and_wrong_keys_are_401() -> None:
    with pytest.raises(Unauthorized, match="missing API key"):
        store().authenticate(None)
    with pytest.raises(Unauthorized, match="invalid API key"):
        store().authenticate("Bearer nope")


def test_allow_list() -> None:
    keys = store()
    app_a = keys.authenticate("Bearer key-a")
    keys.authorize(app_a, "support-bot")
    keys.authorize(app_a, "support-bot@v2")
    with pytest.raises(Forbidden, match="other-bot"):
        keys.authorize(app_a, "other-bot")
    keys.authorize(keys.authenticate("Bearer key-b"), "anything")


def test_admin_key() -> None:
    store().check_admin("Bearer admin-secret")
    with pytest.raises(Unauthorized):
        store().check_admin("Bearer key-a")


def test_auth_off_means_anonymous() -> None:
    assert KeyStore(AuthConfig()).authenticate(None).name == "anonymous"


def test_token_bucket_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    principal = store().authenticate("Bearer key-a")  # 2 per minute
    limiter.take(principal)
    limiter.take(principal)
    with pytest.raises(RateLimited) as exc:
        limiter.take(principal)
    assert exc.value.retry_after_s == 30
    now[0] += 30
    limiter.take(principal)


def test_admin_api_is_closed_without_an_admin_key() -> None:
    for enabled in (False, True):
        with pytest.raises(Forbidden, match="auth.admin_key_sha256"):
            KeyStore(AuthConfig(enabled=enabled)).check_admin("Bearer anything")
    with pytest.raises(Unauthorized):  # auth.enabled false does not open the admin API
        KeyStore(AuthConfig(admin_key_sha256=hash_key("admin-secret"))).check_admin(None)
    KeyStore(AuthConfig(local_dev_open_admin=True)).check_admin(None)


def test_variant_pinning_needs_admin_or_a_pinning_key() -> None:
    cfg = AuthConfig(
        enabled=True,
        admin_key_sha256=hash_key("admin-secret"),
        keys=[
            KeyConfig(name="app", sha256=hash_key("k-app")),
            KeyConfig(name="qa", sha256=hash_key("k-qa"), may_pin_variant=True),
        ],
    )
    keys = KeyStore(cfg)
    with pytest.raises(Forbidden, match="X-Loraplane-Variant"):
        keys.check_pin(keys.authenticate("Bearer k-app"), "Bearer k-app")
    keys.check_pin(keys.authenticate("Bearer k-qa"), "Bearer k-qa")
    anonymous = KeyStore(AuthConfig(admin_key_sha256=hash_key("admin-secret")))
    with pytest.raises(Forbidden):
        anonymous.check_pin(anonymous.authenticate(None), None)
    anonymous.check_pin(anonymous.authenticate(None), "Bearer admin-secret")


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ([("app", "a"), ("app", "b")], "keys[0] ('app') and keys[1] ('app') have the same name"),
        ([("app", "a"), ("web", "a")], "keys[0] ('app') and keys[1] ('web') have the same sha256"),
        ([("x" * 129, "a")], "keys[0].name 'xxxxxxxx"),
        ([("ok", "a"), ("app one", "b")], "keys[1].name 'app one'"),
        ([("team/app", "a")], "keys[0].name 'team/app'"),
        ([("admin", "a")], "keys[0].name 'admin'"),
        ([("", "a")], "keys[0].name ''"),
    ],
)
def test_key_names_are_unique_and_bounded_at_start(keys: list[tuple[str, str]], named: str) -> None:
    listed = [{"name": name, "sha256": hash_key(secret)} for name, secret in keys]
    with pytest.raises(ConfigError) as info:
        load_config(None, {"auth.keys": listed})
    assert named in info.value.message and "auth" in info.value.message


def test_longest_key_name_is_accepted() -> None:
    name = "a-Z_0." + "x" * 122  # 128 characters
    assert load_config(None, {"auth.keys": [{"name": name, "sha256": hash_key("k")}]}).auth.keys[0].name == name

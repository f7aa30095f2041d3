"""Settings read from a mapping with errors naming the variable; secrets masked; logging formats."""

from __future__ import annotations

import io
import json
import logging
import os
import stat

import pytest

from control_plane.config import ConfigError, load_settings
from control_plane.logs import current_tenant, setup_logging

pytestmark = pytest.mark.smoke


def test_embedded_defaults_generate_secrets_once_with_0600(tmp_path):
    env = {"DATA_DIR": str(tmp_path)}
    first = load_settings(env)
    assert first.database_url == f"sqlite+aiosqlite:///{tmp_path / 'gateway.sqlite3'}"
    assert first.redis_url is None and first.host == "127.0.0.1" and first.port == 5000
    assert first.extra["generated_admin_token"] == first.admin_token.get()
    assert stat.S_IMODE(os.stat(tmp_path / "admin_token").st_mode) == 0o600
    second = load_settings(env)
    assert second.admin_token == first.admin_token and "generated_admin_token" not in second.extra


@pytest.mark.parametrize(
    "env, name",
    [
        ({"PORT": "abc"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"DATABASE_URL": "postgres://x/y"}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://root@localhost:3306"}, "DATABASE_URL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"SUPERVISOR_ENABLED": "maybe"}, "SUPERVISOR_ENABLED"),
        ({"ADMIN_TOKEN": "short"}, "ADMIN_TOKEN"),
    ],
)
def test_errors_name_the_variable(tmp_path, env, name):
    with pytest.raises(ConfigError, match=name):
        load_settings({"DATA_DIR": str(tmp_path), "SECRET_KEY": "s" * 32, **env})


def test_missing_secret_without_generation_names_it(tmp_path):
    with pytest.raises(ConfigError, match="'ADMIN_TOKEN' is missing"):
        load_settings({"DATA_DIR": str(tmp_path)}, generate_secrets=False)


def test_secrets_and_passwords_are_masked_in_repr(tmp_path):
    s = load_settings(
        {
            "DATA_DIR": str(tmp_path),
            "ADMIN_TOKEN": "admintoken-1234567890",
            "SECRET_KEY": "secretkey-1234567890",
            "DATABASE_URL": "mysql://u:hunter2@db:3306/gw",
            "REDIS_URL": "redis://:redispass@r:6379/0",
        }
    )
    text = repr(s)
    for secret in ("admintoken-1234567890", "secretkey-1234567890", "hunter2", "redispass"):
        assert secret not in text
    assert s.database_url == "mysql+aiomysql://u:hunter2@db:3306/gw"


def test_sqlalchemy_url_forms_are_accepted(tmp_path):
    base = {"DATA_DIR": str(tmp_path), "ADMIN_TOKEN": "a" * 20, "SECRET_KEY": "b" * 20}
    assert (
        load_settings({**base, "DATABASE_URL": "mysql+pymysql://u@h/db"}).database_url
        == "mysql+aiomysql://u@h/db"
    )
    assert (
        load_settings({**base, "DATABASE_URL": "mariadb://u@h/db"}).database_url == "mysql+aiomysql://u@h/db"
    )


def test_json_logs_carry_the_tenant():
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream)
    token = current_tenant.set("a" * 32)
    try:
        logging.getLogger("control_plane.test").info("hello %s", "world")
    finally:
        current_tenant.reset(token)
        setup_logging("INFO", "text")
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["message"] == "hello world" and line["tenant_id"] == "a" * 32 and line["level"] == "INFO"


def test_text_logs_carry_the_tenant():
    stream = io.StringIO()
    setup_logging("INFO", "text", stream=stream)
    token = current_tenant.set("b" * 32)
    try:
        logging.getLogger("control_plane.test").info("hello")
    finally:
        current_tenant.reset(token)
        setup_logging("INFO", "text")
    assert stream.getvalue().strip().endswith("tenant=" + "b" * 32)

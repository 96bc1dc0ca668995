"""RPC credentials: cookie file, config values, environment; never argv."""

from __future__ import annotations

import pytest

from miner.node.rpc import (
    ENV_PASSWORD,
    ENV_USER,
    AuthConfigError,
    CookieAuth,
    NodeRPC,
    RPCAuth,
    RPCAuthError,
    load_auth,
    read_cookie,
)
from miner.metrics import Metrics


def test_cookie_file_in_bitcoind_format(tmp_path):
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:0a1b2c3d:with-colon\n")
    assert load_auth(cookie_file=cookie) == RPCAuth("__cookie__", "0a1b2c3d:with-colon")


def test_missing_cookie_names_the_path(tmp_path):
    with pytest.raises(AuthConfigError, match=r"\.cookie does not exist"):
        load_auth(cookie_file=tmp_path / ".cookie")


@pytest.mark.parametrize("text", ["", "no-colon", ":secret", "__cookie__:"])
def test_malformed_cookie(tmp_path, text):
    cookie = tmp_path / ".cookie"
    cookie.write_text(text)
    with pytest.raises(AuthConfigError, match="user:password"):
        read_cookie(cookie)


def test_user_and_password_from_config():
    assert load_auth(user="alice", password="p@ss/w:rd", env={}) == RPCAuth("alice", "p@ss/w:rd")


def test_user_without_password_is_named():
    with pytest.raises(AuthConfigError, match="'alice' given without an RPC password"):
        load_auth(user="alice", env={})
    with pytest.raises(AuthConfigError, match="password given without an RPC user"):
        load_auth(password="secret", env={})


def test_cookie_and_password_together_refused(tmp_path):
    with pytest.raises(AuthConfigError, match="not both"):
        load_auth(cookie_file=tmp_path / ".cookie", user="alice", password="x")


def test_environment():
    env = {ENV_USER: "bob", ENV_PASSWORD: "hunter2"}
    assert load_auth(env=env) == RPCAuth("bob", "hunter2")


def test_config_wins_over_environment():
    env = {ENV_USER: "bob", ENV_PASSWORD: "hunter2"}
    assert load_auth(user="alice", password="x", env=env).user == "alice"


@pytest.mark.parametrize("env, missing", [({ENV_USER: "bob"}, ENV_PASSWORD), ({ENV_PASSWORD: "x"}, ENV_USER)])
def test_half_environment_names_the_missing_variable(env, missing):
    with pytest.raises(AuthConfigError, match=f"but {missing} is not"):
        load_auth(env=env)


def test_nothing_given_lists_every_way():
    with pytest.raises(AuthConfigError) as info:
        load_auth(env={})
    text = str(info.value)
    assert "cookie file" in text and ENV_USER in text and ENV_PASSWORD in text
    assert "command line" in text


def test_password_not_in_repr():
    assert "hunter2" not in repr(RPCAuth("bob", "hunter2"))


def test_credentials_in_url_refused():
    with pytest.raises(ValueError, match="not in the URL"):
        NodeRPC("http://bob:hunter2@127.0.0.1:8332/", RPCAuth("bob", "hunter2"))


def test_cookie_reread_after_auth_failure(regtest_node, tmp_path, caplog):
    """A cookie is read again after a failure, as after a bitcoind restart (real node, real HTTP)."""
    api_key = regtest_node.auth.password
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:stale-secret")
    metrics = Metrics()
    rpc = NodeRPC(regtest_node.rpc_url, CookieAuth(cookie), metrics=metrics, name="cookie-node")
    with pytest.raises(RPCAuthError) as info:
        rpc.call_sync("getblockcount")
    assert info.value.http_status == 401 and info.value.kind == "auth"
    assert not rpc.up
    cookie.write_text(f"__cookie__:{api_key}\n")  # the "restarted node" wrote a new cookie
    with caplog.at_level("INFO", logger="miner.node.rpc"):
        assert isinstance(rpc.call_sync("getblockcount"), int)
    assert rpc.up
    assert "connection to cookie-node restored" in caplog.text
    assert metrics.registry.get_sample_value("gridminer_rpc_errors_total", {"kind": "auth"}) == 1


def test_cookie_missing_while_node_restarts_is_unavailable(tmp_path):
    from miner.node.rpc import NodeUnavailable

    rpc = NodeRPC("http://127.0.0.1:9/", CookieAuth(tmp_path / "absent"))
    with pytest.raises(NodeUnavailable, match="does not exist"):
        rpc.call_sync("getblockcount")

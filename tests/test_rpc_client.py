"""rpc/ against a real JSON-RPC server over a real Unix socket, TCP and HTTP."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nvmf_phoenix.rpc import (
    JsonStream,
    RpcClient,
    RpcConnectionError,
    RpcError,
    RpcProtocolError,
    RpcTimeout,
    SpdkClientAdapter,
)
from nvmf_phoenix.rpc import nvmf as rpc_nvmf
from spdk.rpc.client import JSONRPCClient

from tests.jsonrpc_fixtures import HttpProxyServer, StreamServer


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[StreamServer]:
    srv = StreamServer(str(tmp_path / "rpc.sock"))
    yield srv
    srv.close()


@pytest.fixture
def http_server() -> Iterator[HttpProxyServer]:
    srv = HttpProxyServer()
    yield srv
    srv.close()


def test_success_and_error_code_over_unix(unix_server: StreamServer) -> None:
    with RpcClient.connect(unix_server.address, timeout=5) as client:
        assert client.call("echo", {"a": 1}) == {"a": 1}
        with pytest.raises(RpcError) as err:
            client.call("fail", {"code": -17, "message": "File exists"})
        assert (err.value.code, err.value.message) == (-17, "File exists")
        assert err.value.method == "fail" and err.value.address == unix_server.address
        with pytest.raises(RpcError) as err:
            client.call("no_such_method")
        assert err.value.code == -32601


def test_tcp_transport() -> None:
    srv = StreamServer()
    try:
        with RpcClient.connect(srv.address, timeout=5) as client:
            assert client.call("echo", {"x": "y"}) == {"x": "y"}
    finally:
        srv.close()


def test_timeout_is_wall_clock(unix_server: StreamServer) -> None:
    with RpcClient.connect(unix_server.address, timeout=5) as client:
        start = time.monotonic()
        with pytest.raises(RpcTimeout) as err:
            client.call("slow", {"seconds": 3}, timeout=0.3)
        assert time.monotonic() - start < 2.0
        assert "timeout" in str(err.value) and unix_server.address in str(err.value)


def test_server_closing_mid_response(unix_server: StreamServer) -> None:
    with RpcClient.connect(unix_server.address, timeout=5) as client:
        with pytest.raises(RpcConnectionError) as err:
            client.call("half")
        assert "closed" in err.value.message and "bytes of a response" in err.value.message


def test_malformed_response(unix_server: StreamServer) -> None:
    with RpcClient.connect(unix_server.address, timeout=5) as client:
        with pytest.raises(RpcProtocolError) as err:
            client.call("garbage")
        assert "malformed JSON" in err.value.message
        assert unix_server.address in str(err.value)


def test_connect_retry_while_socket_appears_late(tmp_path: Path) -> None:
    path = str(tmp_path / "late.sock")
    servers: list[StreamServer] = []
    timer = threading.Timer(0.4, lambda: servers.append(StreamServer(path)))
    timer.start()
    try:
        with RpcClient.connect(path, timeout=5, retry_for=10) as client:
            assert client.call("echo", {"late": True}) == {"late": True}
    finally:
        timer.join()
        for s in servers:
            s.close()


def test_connect_gives_up_within_bound(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(RpcConnectionError) as err:
        RpcClient.connect(str(tmp_path / "never.sock"), retry_for=0.5)
    assert 0.4 < time.monotonic() - start < 3
    assert "no RPC socket at" in err.value.message


def test_pipelined_calls_answered_out_of_order(unix_server: StreamServer) -> None:
    with RpcClient.connect(unix_server.address, timeout=5) as client:
        calls = [("hold", {"i": i}) for i in range(50)] + [("release", None)]
        results = client.pipeline(calls)
        assert results[:50] == [{"i": i} for i in range(50)]
        assert results[50] is True


def test_pipeline_keeps_going_past_errors(unix_server: StreamServer) -> None:
    with RpcClient.connect(unix_server.address, timeout=5) as client:
        calls = [("echo", {"i": i}) if i % 3 else ("fail", {"code": -22}) for i in range(300)]
        results = client.pipeline(calls, window=32)
        for i, r in enumerate(results):
            if i % 3:
                assert r == {"i": i}
            else:
                assert isinstance(r, RpcError) and r.code == -22
        assert len({req["id"] for req in unix_server.requests}) == 300


def test_bad_addresses_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(RpcConnectionError, match=r"no RPC socket at .*missing\.sock"):
        RpcClient.connect(str(tmp_path / "missing.sock"))
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(RpcConnectionError, match=f"127.0.0.1:{port} refused"):
        RpcClient.connect(f"127.0.0.1:{port}")
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    with pytest.raises(RpcConnectionError, match="stale socket file"):
        RpcClient.connect(str(stale))
    with pytest.raises(RpcConnectionError, match="not an IP address"):
        RpcClient.connect("example.invalid:4420")


def test_http_proxy_with_basic_auth(http_server: HttpProxyServer) -> None:
    with RpcClient.connect(http_server.url, timeout=5) as client:
        assert client.call("echo", {"h": 1}) == {"h": 1}
        with pytest.raises(RpcError) as err:
            client.call("fail", {"code": -32603, "message": "Internal error"})
        assert err.value.code == -32603
        assert client.pipeline([("echo", {"i": 1}), ("echo", {"i": 2})]) == [{"i": 1},
                                                                              {"i": 2}]
        with pytest.raises(RpcProtocolError):
            client.call("garbage")
        with pytest.raises(RpcTimeout):
            client.call("slow", {"seconds": 2}, timeout=0.2)
        with pytest.raises(RpcConnectionError, match="broke") as err:
            client.call("half", {"pad": "x" * 200})
        assert err.value.address == http_server.url.replace("spdk:secret@", "")
    bad = http_server.url.replace("secret", "wrong")
    with RpcClient.connect(bad, timeout=5) as client, pytest.raises(RpcConnectionError,
                                                                     match="401"):
        client.call("echo")


def test_typed_wrapper_sends_spdk_parameter_names(unix_server: StreamServer) -> None:
    with RpcClient.connect(unix_server.address, timeout=5) as client:
        addr = rpc_nvmf.listen_address("127.0.0.1", 4420)
        client.call("echo")
        try:
            rpc_nvmf.nvmf_subsystem_add_listener(client, "nqn.2016-06.io.spdk:c1", addr,
                                                 ana_state="optimized")
        except RpcError as err:
            assert err.code == -32601
    req = unix_server.requests[-1]
    assert req["method"] == "nvmf_subsystem_add_listener"
    assert req["params"] == {"nqn": "nqn.2016-06.io.spdk:c1", "listen_address": {
        "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "4420"},
        "ana_state": "optimized"}


def test_spdk_client_adapter_parses_codes(unix_server: StreamServer) -> None:
    adapter = SpdkClientAdapter(JSONRPCClient(unix_server.address, timeout=5),
                                unix_server.address)
    try:
        assert adapter.call("echo", {"k": "v"}) == {"k": "v"}
        with pytest.raises(RpcError) as err:
            adapter.call("fail", {"code": -19, "message": "No such device"})
        assert (err.value.code, err.value.message) == (-19, "No such device")
    finally:
        adapter.close()


@pytest.mark.parametrize("chunks", [1, 2, 7, 64])
def test_stream_decoder_handles_any_split(chunks: int) -> None:
    text = ('{"jsonrpc": "2.0", "id": 1, "result": {"s": "h\\u00e9llo \u00fc", "n": -1.5e3, '
            '"t": true, "z": null}}\n{"jsonrpc":"2.0","id":2,"result":[false]}').encode()
    dec, out = JsonStream(), []
    step = max(1, len(text) // chunks)
    for i in range(0, len(text), step):
        out += dec.feed(text[i:i + step])
    assert [o["id"] for o in out] == [1, 2]
    assert out[0]["result"]["s"] == "h\u00e9llo \u00fc" and out[1]["result"] == [False]

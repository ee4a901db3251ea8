"""Admission control, disconnects, timeouts, graceful shutdown and a short concurrent-streams smoke test."""

import json
import threading
import time

import httpx
import pytest

from tests.rag.serve.conftest import API_KEY, QA, LiveServer, free_port, serve_config

H = {"Authorization": f"Bearer {API_KEY}"}
LONG = {"model": "tiny", "stream": True, "ignore_eos": True, "max_tokens": 250, "temperature": 1.0,
        "messages": [{"role": "user", "content": "Tell me a long story."}]}


def _server(files, **kw):
    from rag.serve.app import create_app

    return LiveServer(create_app(serve_config(files, **kw)), free_port())


def _wait(pred, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _sse_lines(resp):
    for line in resp.iter_lines():
        if line.startswith("data: "):
            yield line[6:]


def test_queue_full_503_and_disconnect_frees_the_slot(serve_files):
    srv = _server(serve_files, max_concurrency=1, max_queue=0)
    try:
        with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b:
            with a.stream("POST", srv.url + "/v1/chat/completions", json=LONG, headers=H) as resp:
                lines = _sse_lines(resp)
                next(lines), next(lines)  # streaming: the slot is taken
                r = b.post(srv.url + "/v1/chat/completions", json={**LONG, "stream": False}, headers=H)
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "server_busy"
            # the client left mid-stream: the generation is cancelled and the slot comes back
            assert _wait(lambda: srv.state.active == 0 and srv.state.cancelled >= 1)
            r = b.post(srv.url + "/v1/chat/completions", headers=H,
                       json={"model": "tiny", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
    finally:
        srv.stop()


def test_timeout_ends_the_stream_cleanly(serve_files):
    # 0.05 s: far less than 256 tokens take even on an idle machine (the tiny model makes ~1 ms/token)
    srv = _server(serve_files, request_timeout_s=0.05)
    try:
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json={**LONG, "max_tokens": 256}, headers=H,
                          timeout=30) as resp:
            data = list(_sse_lines(resp))
        assert data[-1] == "[DONE]"
        last = json.loads(data[-2])
        assert last["timeout"] is True and last["choices"][0]["finish_reason"] == "length"
        assert last["usage"]["completion_tokens"] < 256
    finally:
        srv.stop()


def test_graceful_shutdown_finishes_in_flight_streams(serve_files):
    srv = _server(serve_files)
    got = []
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json={**LONG, "max_tokens": 120}, headers=H,
                      timeout=60) as resp:
        lines = _sse_lines(resp)
        got.append(next(lines))
        srv.server.should_exit = True  # what SIGTERM/SIGINT do in uvicorn
        got += list(lines)
    srv.thread.join(timeout=30)
    assert not srv.thread.is_alive()
    assert got[-1] == "[DONE]"
    assert json.loads(got[-2])["usage"]["completion_tokens"] == 120  # nothing was cut off
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health", timeout=2)


def test_concurrent_streams_smoke(live):
    """8 clients stream at once; every stream is complete and equals the non-streamed answer."""
    from openai import OpenAI

    client = OpenAI(base_url=live.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    questions = list(QA) * 3
    results, errors = {}, []

    def one(i, q):
        try:
            chunks = list(client.chat.completions.create(model="tiny", stream=True, temperature=0,
                                                         messages=[{"role": "user", "content": q}]))
            results[i] = ("".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason)
        except Exception as err:  # collected, asserted below
            errors.append(repr(err))

    threads = [threading.Thread(target=one, args=(i, q)) for i, q in enumerate(questions[:8])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 8
    for i, q in enumerate(questions[:8]):
        ref = client.chat.completions.create(model="tiny", temperature=0, messages=[{"role": "user", "content": q}])
        assert results[i] == (ref.choices[0].message.content, ref.choices[0].finish_reason)

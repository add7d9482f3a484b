"""OpenAI-compatible client against a real HTTP server on loopback: retries, limits, schema."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rl.data.pipeline.client import ChatRequest, ClientError, OpenAIClient
from rl.data.pipeline.config import ClientConfig


class Server:
    """Answers /chat/completions with scripted statuses, then a fixed reply; records requests."""

    def __init__(self, statuses=(), delay_s=0.0):
        self.statuses, self.delay_s = list(statuses), delay_s
        self.bodies, self.headers, self.in_flight, self.most_in_flight = [], [], 0, 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    status = server.statuses.pop(0) if server.statuses else 200
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                time.sleep(server.delay_s)
                with server.lock:
                    server.in_flight -= 1
                payload = {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 11, "completion_tokens": 3}}
                data = (b"<html>proxy page</html>" if status == 299 else
                        json.dumps(payload if status == 200 else {"error": "no"}).encode())
                status = 200 if status == 299 else status
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    def close(self):
        self.http.shutdown()


@pytest.fixture
def serve():
    servers = []

    def start(**kw):
        servers.append(Server(**kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def client_for(server, **kw):
    return OpenAIClient(ClientConfig(model="m", base_url=server.url, backoff_s=0.01, **kw))


REQUEST = ChatRequest([{"role": "user", "content": "hi"}], 8)


def test_transient_errors_are_retried_and_usage_is_read(serve):
    server = serve(statuses=[500, 429, 503])
    reply = client_for(server).submit(REQUEST).result()
    assert (reply.text, reply.prompt_tokens, reply.completion_tokens) == ("ok", 11, 3)
    assert len(server.bodies) == 4


def test_a_client_error_fails_at_once_and_retries_run_out(serve):
    server = serve(statuses=[400])
    with pytest.raises(ClientError, match="HTTP 400"):
        client_for(server).submit(REQUEST).result()
    assert len(server.bodies) == 1
    server = serve(statuses=[500] * 10)
    with pytest.raises(ClientError, match="3 attempts failed"):
        client_for(server, max_retries=2).submit(REQUEST).result()
    assert len(server.bodies) == 3


def test_timeouts_are_retried_then_fail(serve):
    server = serve(delay_s=0.5)
    with pytest.raises(ClientError, match="ReadTimeout"):
        client_for(server, timeout_s=0.1, max_retries=1).submit(REQUEST).result()
    assert len(server.bodies) == 2


def test_requests_in_flight_stay_under_the_concurrency_limit(serve, monkeypatch):
    server = serve(delay_s=0.1)
    monkeypatch.setenv("TEST_KEY", "sk-test")
    client = client_for(server, max_concurrency=3, api_key_env="TEST_KEY")
    futures = [client.submit(REQUEST) for _ in range(9)]
    assert all(f.result().text == "ok" for f in futures)
    assert server.most_in_flight == 3
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize("mode, key", [("response_format", "response_format"),
                                       ("vllm", "structured_outputs"), ("none", None)])
def test_schema_goes_where_the_server_expects_it(serve, mode, key):
    server = serve()
    schema = {"type": "object"}
    client_for(server, structured_outputs=mode).submit(
        ChatRequest(REQUEST.messages, 8, json_schema=schema)).result()
    body = server.bodies[0]
    assert {"response_format", "structured_outputs"} & set(body) == ({key} if key else set())
    if key == "response_format":
        assert body[key]["json_schema"]["schema"] == schema
    elif key:
        assert body[key] == {"json": schema}


def test_a_reply_that_is_not_chat_json_is_a_client_error(serve):
    server = serve(statuses=[299])  # the handler's code for "200 with an HTML body"
    with pytest.raises(ClientError, match="unexpected reply: <html>"):
        client_for(server).submit(REQUEST).result()


def test_request_body_options_for_reasoning_models(serve):
    server = serve()
    client_for(server, temperature=None, max_tokens_key="max_completion_tokens",
               extra_body={"reasoning_effort": "low"},
               chat_template_kwargs={"enable_thinking": False}).submit(REQUEST).result()
    body = server.bodies[0]
    assert "temperature" not in body and "max_tokens" not in body
    assert body["max_completion_tokens"] == 8 and body["reasoning_effort"] == "low"
    assert body["chat_template_kwargs"] == {"enable_thinking": False}

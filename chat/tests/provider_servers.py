"""Local HTTP servers speaking each provider's wire format, scripted reply by reply.

A test queues `Reply` values on a `ProviderServer`; each request it receives takes the
next one and is recorded (path, headers, JSON body). A reply is a JSON body, or SSE
events sent chunk by chunk, optionally compressed, optionally cut (the socket closed mid-body, with no final
chunk) after some events, or a hang until the server stops (for client timeouts).
The payload builders below follow the shapes the pinned SDKs parse.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import zlib
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: dict | None = None
    events: list[str] = field(default_factory=list)  # whole SSE events, each ending in a blank line
    headers: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None  # close the connection after this many events
    stall_after: int | None = None  # send nothing more after this many events, until the server stops
    hang: bool = False  # send nothing until the server stops
    compressed: str | None = None  # "gzip" or "deflate": the body or events sent so, with the header saying it


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict


class ProviderServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: deque[Reply] = deque()
        self.received: list[Received] = []
        self.disconnects = 0  # clients that closed a stalled stream
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def queue(self, *replies: Reply) -> ProviderServer:
        self.replies.extend(replies)
        return self

    def start(self) -> ProviderServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ProviderServer

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.server.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(raw or b"{}")))
        reply = self.server.replies.popleft()
        if reply.hang:
            self.server.stopping.wait(30)
            self.close_connection = True
            return
        compressor = _compressor(reply.compressed)
        if reply.body is not None:
            payload = json.dumps(reply.body).encode()
            payload = compressor.compress(payload) + compressor.flush() if compressor else payload
            self.send_response(reply.status)
            self._headers(reply, {"content-type": "application/json", "content-length": str(len(payload))})
            self.wfile.write(payload)
            return
        self.send_response(reply.status)
        self._headers(reply, {"content-type": "text/event-stream", "transfer-encoding": "chunked", "cache-control": "no-cache"})
        for index, event in enumerate(reply.events):
            if reply.cut_after is not None and index == reply.cut_after:
                self._cut()
                return
            if reply.stall_after is not None and index == reply.stall_after:
                self._stall()
                return
            data = event.encode()
            data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH) if compressor else data
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        if reply.cut_after is not None and reply.cut_after >= len(reply.events):
            self._cut()
            return
        if compressor:
            data = compressor.flush()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")

    def _headers(self, reply: Reply, defaults: dict[str, str]) -> None:
        encoded = {"content-encoding": reply.compressed} if reply.compressed else {}
        for name, value in {**defaults, **encoded, **reply.headers}.items():
            self.send_header(name, value)
        self.end_headers()

    def _stall(self) -> None:
        # Send nothing more; note it when the client closes its end first.
        while not self.server.stopping.wait(0.02):
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable and not self.connection.recv(1):
                self.server.disconnects += 1
                return
        self._cut()

    def _cut(self) -> None:
        # Mid-body, without the terminating chunk: the client sees an incomplete response.
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


def _compressor(encoding: str | None):
    if encoding is None:
        return None
    return zlib.compressobj(wbits=zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)


def sse(data: dict | str, event: str | None = None) -> str:
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


# OpenAI Chat Completions (`/v1/chat/completions`)


def openai_error(status: int, message: str, type_: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def openai_completion(text: str, usage: dict, model: str = "gpt-test") -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": usage,
    }


def openai_stream(parts: list[str], usage: dict | None, model: str = "gpt-test") -> list[str]:
    """Role chunk, one chunk per part, the finish chunk, the usage chunk (empty choices; None: a server that sends none), [DONE]."""

    def chunk(choices: list, usage_value: dict | None = None) -> str:
        return sse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": choices,
                "usage": usage_value,
            }
        )

    events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    events += [chunk([{"index": 0, "delta": {"content": part}, "finish_reason": None}]) for part in parts]
    events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if usage is not None:
        events.append(chunk([], usage))
    events.append(sse("[DONE]"))
    return events


# Anthropic Messages (`/v1/messages`)


def anthropic_error(type_: str, message: str) -> dict:
    return {"type": "error", "error": {"type": type_, "message": message}}


def anthropic_message(text: str, usage: dict, model: str = "claude-test") -> dict:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "thinking", "thinking": "Let me think.", "signature": "sig"}, {"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def anthropic_stream(parts: list[str], start_usage: dict, delta_usage: dict, model: str = "claude-test") -> list[str]:
    """message_start, a thinking block, a text block (one delta per part), message_delta, message_stop."""
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    events = [
        sse({"type": "message_start", "message": {**message, "usage": start_usage}}, "message_start"),
        sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
            "content_block_start",
        ),
        sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me think."}},
            "content_block_delta",
        ),
        sse({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}, "content_block_delta"),
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}, "content_block_start"),
        sse({"type": "ping"}, "ping"),
    ]
    events += [
        sse({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": part}}, "content_block_delta")
        for part in parts
    ]
    events += [
        sse({"type": "content_block_stop", "index": 1}, "content_block_stop"),
        sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": delta_usage}, "message_delta"),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    return events


# Gemini (`/v1/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`)


def gemini_error(code: int, status: str, message: str, details: list | None = None) -> dict:
    return {"error": {"code": code, "message": message, "status": status, **({"details": details} if details else {})}}


def gemini_response(text: str, usage: dict | None, finish: str | None = "STOP", thought: str = "", model: str = "gemini-test") -> dict:
    parts = ([{"text": thought, "thought": True}] if thought else []) + ([{"text": text}] if text else [])
    candidate = {"content": {"parts": parts, "role": "model"}, "index": 0, **({"finishReason": finish} if finish else {})}
    return {"candidates": [candidate], **({"usageMetadata": usage} if usage else {}), "modelVersion": model, "responseId": "resp-1"}


def gemini_stream(parts: list[str], usages: list[dict | None], thought: str = "") -> list[str]:
    """One chunk per part with its running usage (None: a chunk without usage); the last says STOP."""
    return [
        sse(gemini_response(part, usage, finish="STOP" if index == len(parts) - 1 else None, thought=thought if index == 0 else ""))
        for index, (part, usage) in enumerate(zip(parts, usages))
    ]

"""The web API's limits over real loopback sockets (127.0.0.1): a slow upload gets 408 and is dropped, a full
server or queue answers 503 with Retry-After, forms with too many fields or a second file are refused as soon
as that part arrives, error bodies stay within 1 KB, /health names the model without its path, and both
``BackgroundServer.stop()`` and SIGTERM end within the shutdown timeout while a client holds a half-sent body.

Every socket has a timeout: a server that waited for a body that never comes fails the test, it does not hang.
No timing is asserted (``python -m workshop_utils bench --serve`` measures /health under a many-field form).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from test_serve import SMALL_LIMIT, GatedScorer, check_answer  # helpers shared with test_serve

from workshop_utils.apps.serve.app import create_app
from workshop_utils.apps.serve.server import BackgroundServer, port_is_open
from workshop_utils.apps.serve.uploads import MAX_ERROR_BYTES, clip_message

HOST = "127.0.0.1"
SOCKET_TIMEOUT = 30.0  # seconds a test waits for an answer; the servers' body timeouts below are longer
BOUNDARY = "limits-test-boundary"
FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
TWO_FILES = ("The form has more than one file, and this API scores one photo per request: send each photo in a "
             "request of its own, as the form field 'file' (curl -F file=@photo.jpg).")
TOO_MANY_FIELDS = ("The form has more than 3 text fields besides the photo (this server's limit); send the photo "
                   "alone, as the form field 'file' (curl -F file=@photo.jpg), or as the raw request body.")


# -- raw HTTP over a socket -------------------------------------------------------------------------------
def open_upload(port: int, sent: bytes, length: int, content_type: str = "image/jpeg") -> socket.socket:
    """A POST /predict that declares ``length`` body bytes but sends only ``sent``; the socket stays open."""
    sock = socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT)
    head = (f"POST /predict HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()
    sock.sendall(head + sent)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response: (status, lower-cased headers, body). Raises socket.timeout when none comes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"The server closed the connection without an answer (got {data[:200]!r}).")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {key.strip().lower(): value.strip() for key, value in (line.split(":", 1) for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server has closed the connection (end of stream or reset)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def form_part(name: str, data: bytes = b"", filename: str | None = None) -> bytes:
    """One multipart/form-data part (headers, data and its closing line break)."""
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


def form_end() -> bytes:
    return f"--{BOUNDARY}--\r\n".encode()


def health(server: BackgroundServer) -> dict:
    return requests.get(server.url + "health", timeout=SOCKET_TIMEOUT).json()


def wait_until(condition, what: str, seconds: float = 60.0) -> None:
    """Poll ``condition()`` until it is true (the test fails after ``seconds``; no timing is asserted)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {seconds:g} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def bounded(classifier):  # noqa: F811
    """A real server with small form limits (3 text fields) and a body timeout longer than SOCKET_TIMEOUT."""
    app = create_app(classifier, max_bytes=SMALL_LIMIT, max_fields=3, body_timeout=120)
    with BackgroundServer(app, shutdown_timeout=1) as server:
        yield server
    assert not server.forced and not port_is_open(HOST, server.port)


# -- forms ------------------------------------------------------------------------------------------------
def test_too_many_fields_are_refused_as_soon_as_they_arrive(bounded, photos):
    """4 text fields of a form that says it is 200 KB: the answer comes though the rest is never sent."""
    sent = b"".join(form_part(f"note{i}", b"x") for i in range(4))
    with open_upload(bounded.port, sent, length=200_000, content_type=FORM_TYPE) as sock:
        status, _, body = read_answer(sock)
    assert status == 400 and json.loads(body)["error"] == TOO_MANY_FIELDS
    # the tester's case, smaller: a whole form of 5,000 one-byte fields gets the same short answer
    many = b"".join(form_part("f", b"x") for _ in range(5000)) + form_end()
    reply = requests.post(bounded.url + "predict", data=many, headers={"Content-Type": FORM_TYPE},
                          timeout=SOCKET_TIMEOUT)
    assert reply.status_code == 400 and reply.json()["error"] == TOO_MANY_FIELDS
    assert len(reply.content) <= MAX_ERROR_BYTES
    name, photo = next(iter(photos.items()))  # 3 fields beside the photo are fine
    fine = requests.post(bounded.url + "predict", files={"file": (name, photo)}, data={"a": "1", "b": "2", "c": "3"},
                         timeout=SOCKET_TIMEOUT)
    assert fine.status_code == 200 and fine.json()["filename"] == name


def test_a_second_file_gets_400_naming_the_rule(bounded, photos):
    name, photo = next(iter(photos.items()))
    reply = requests.post(bounded.url + "predict", files={"file": (name, photo), "also": ("other.jpg", photo)},
                          timeout=SOCKET_TIMEOUT)
    assert reply.status_code == 400 and reply.json()["error"] == TWO_FILES
    # refused when the second file's headers arrive, before its data
    sent = form_part("file", photo, filename=name) + f'--{BOUNDARY}\r\nContent-Disposition: form-data; ' \
        'name="also"; filename="other.jpg"\r\n\r\n'.encode()
    with open_upload(bounded.port, sent, length=len(sent) + 100_000, content_type=FORM_TYPE) as sock:
        status, _, body = read_answer(sock)
    assert status == 400 and json.loads(body)["error"] == TWO_FILES


def test_a_text_field_named_file_is_not_taken_for_the_photo(bounded):
    reply = requests.post(bounded.url + "predict", files={"file": (None, b"just text")}, timeout=SOCKET_TIMEOUT)
    assert reply.status_code == 400
    assert reply.json()["error"].startswith("The form's 'file' field is text, not a file (its Content-Disposition "
                                            "has no filename); send the photo as a file (curl -F file=@photo.jpg")
    big = requests.post(bounded.url + "predict", files={"note": (None, b"x" * 70_000)}, timeout=SOCKET_TIMEOUT)
    assert big.status_code == 413
    assert big.json()["error"].startswith("A text field of the form is over 64 KB (this server's limit for fields "
                                          "that are not files)")


@pytest.mark.parametrize("case", ["long file name", "long field names"])
def test_error_bodies_are_at_most_1_kb(bounded, case):
    if case == "long file name":  # the name is echoed in the message: it is shortened
        reply = requests.post(bounded.url + "predict", files={"file": ("é" * 1500 + ".jpg", b"not a photo")},
                              timeout=SOCKET_TIMEOUT)
        assert reply.status_code == 415
        assert re.match(r"^image 'é{119}…': the bytes \(11 bytes, starting b'not a ph'\) are not a decodable",
                        reply.json()["error"]), reply.json()["error"]
    else:
        fields = {f"{letter * 3000}": "x" for letter in "abc"}
        reply = requests.post(bounded.url + "predict", files={k: (None, v) for k, v in fields.items()},
                              timeout=SOCKET_TIMEOUT)
        assert reply.status_code == 400
        assert reply.json()["error"].startswith(f"The form has no 'file' field (fields: '{'a' * 119}…', ")
    assert len(reply.content) <= MAX_ERROR_BYTES


def test_clip_message_keeps_json_error_bodies_within_1_kb():
    assert clip_message("short") == "short"
    for message in ("x" * 5000, "é" * 2000, "\x00" * 1000 + "tail"):
        clipped = clip_message(message)
        body = json.dumps({"error": clipped}, ensure_ascii=False, separators=(",", ":")).encode()
        assert len(body) <= MAX_ERROR_BYTES and clipped.endswith("…") and message.startswith(clipped[:-1])


# -- time and concurrency ---------------------------------------------------------------------------------
def test_a_slow_upload_gets_408_and_is_dropped(classifier, photos):  # noqa: F811
    app = create_app(classifier, max_bytes=SMALL_LIMIT, body_timeout=1)
    name, photo = next(iter(photos.items()))
    with BackgroundServer(app, shutdown_timeout=1) as server:
        for sent, content_type in ((photo[:500], "image/jpeg"),
                                   (form_part("file", photo, filename=name)[:700], FORM_TYPE)):
            with open_upload(server.port, sent, length=len(photo) + 1000, content_type=content_type) as sock:
                status, headers, body = read_answer(sock)
                assert status == 408 and headers["connection"] == "close"
                assert json.loads(body)["error"] == (
                    f"The upload did not arrive within 1 s ({len(sent):,} of {len(photo) + 1000:,} bytes received); "
                    "send it over a faster connection, or start the server with a larger --body-timeout.")
                assert closed_by_server(sock)
        wait_until(lambda: health(server)["in_flight"] == 0, "released")
        assert health(server)["body_timeout_s"] == 1
        assert requests.post(server.url + "predict", data=photo, timeout=SOCKET_TIMEOUT).status_code == 200


def test_a_full_server_answers_503_with_retry_after(classifier, photos, expected):  # noqa: F811
    app = create_app(classifier, max_bytes=SMALL_LIMIT, max_concurrency=2, body_timeout=120)
    name, photo = next(iter(photos.items()))
    with BackgroundServer(app, shutdown_timeout=1) as server:
        held = [open_upload(server.port, photo[:100], length=len(photo)) for _ in range(2)]
        try:
            wait_until(lambda: health(server)["in_flight"] == 2, "2 uploads in flight")
            busy = requests.post(server.url + "predict", data=photo, timeout=SOCKET_TIMEOUT)
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
            assert busy.json()["error"] == ("The server is busy: 2 uploads are being read or scored (its "
                                            "--max-concurrency). Try again in a moment.")
            state = health(server)  # /health is not limited
            assert state["status"] == "ok" and state["refused"]["busy"] == 1 and state["max_concurrency"] == 2
        finally:
            for sock in held:
                sock.close()
        wait_until(lambda: health(server)["in_flight"] == 0, "released after the clients left")
        reply = requests.post(server.url + "predict", data=photo, timeout=SOCKET_TIMEOUT)
        assert reply.status_code == 200
        check_answer(reply.json(), expected[name], classifier.labels)


class GatedClassifier:
    """The classifier with a gated ``predict_proba`` (GatedScorer): the model seems busy until released."""

    def __init__(self, classifier, scorer) -> None:  # noqa: F811
        self._classifier, self.predict_proba = classifier, scorer

    def __getattr__(self, name: str):
        return getattr(self._classifier, name)


def test_a_full_queue_answers_503_with_retry_after(classifier, photos, expected):  # noqa: F811
    scorer = GatedScorer(classifier)
    app = create_app(GatedClassifier(classifier, scorer), max_bytes=SMALL_LIMIT, max_queue=2, warm_up=False)
    names = list(photos)[:3]

    def post(name: str) -> requests.Response:
        return requests.post(server.url + "predict", data=photos[name], timeout=120)

    with BackgroundServer(app, shutdown_timeout=1) as server, ThreadPoolExecutor(3) as pool:
        try:
            first = pool.submit(post, names[0])
            assert scorer.entered.wait(60), "the first photo never reached the model"
            waiting = [pool.submit(post, name) for name in names[1:]]
            wait_until(lambda: health(server)["queued"] == 2, "2 photos queued")
            full = requests.post(server.url + "predict", data=photos[names[0]], timeout=SOCKET_TIMEOUT)
            assert full.status_code == 503 and full.headers["Retry-After"] == "1"
            assert full.json()["error"] == ("The scoring queue is full: 2 images wait for the model (the server's "
                                            "--max-queue). Try again in a moment.")
            assert health(server)["refused"]["queue_full"] == 1
        finally:
            scorer.release.set()
        for name, future in zip(names, [first, *waiting]):
            reply = future.result(timeout=120)
            assert reply.status_code == 200, reply.text
            check_answer(reply.json(), expected[name], classifier.labels)


def test_stop_ends_within_the_shutdown_timeout_despite_a_half_sent_body(classifier, photos):  # noqa: F811
    server = BackgroundServer(create_app(classifier, body_timeout=600), shutdown_timeout=1).start()
    photo = next(iter(photos.values()))
    try:
        with open_upload(server.port, photo[:100], length=len(photo)) as sock:
            wait_until(lambda: health(server)["in_flight"] == 1, "1 upload in flight")
            server.stop(timeout=60)
            status, headers, body = read_answer(sock)
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body)["error"] == "The server is shutting down; try again in a moment."
        assert not server.forced, "stop() had to force the exit: the graceful shutdown did not end on time"
    finally:
        server.stop()
    assert not server.running and not port_is_open(HOST, server.port)


# -- the command line -------------------------------------------------------------------------------------
def test_sigterm_ends_the_command_within_the_shutdown_timeout(exported_model, photos, tmp_path):  # noqa: F811
    """`serve MODEL --shutdown-timeout 1` with a client holding a half-sent body: SIGTERM ends it, exit code 0;
    /health shows the limits given on the command line and the model's folder name, not its path."""
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "workshop_utils", "serve", str(exported_model), "--port", "0", "--body-timeout",
             "600", "--max-concurrency", "5", "--max-queue", "7", "--shutdown-timeout", "1"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline, port, state = time.monotonic() + 180, None, None
        while state is None and time.monotonic() < deadline and process.poll() is None:
            found = re.search(r"Web page: http://127\.0\.0\.1:(\d+)/", log.read_text())
            port = int(found.group(1)) if found else None
            if port:
                try:
                    state = requests.get(f"http://{HOST}:{port}/health", timeout=10).json()
                except requests.ConnectionError:
                    pass
            time.sleep(0.2)
        assert state, f"the server did not answer:\n{log.read_text()}"
        assert (state["body_timeout_s"], state["max_concurrency"], state["max_queue"]) == (600, 5, 7)
        assert state["model"]["folder"] == exported_model.name and "directory" not in state["model"]
        assert str(exported_model.parent) not in json.dumps(state)
        with open_upload(port, next(iter(photos.values()))[:100], length=50_000) as sock:
            deadline = time.monotonic() + 60
            while requests.get(f"http://{HOST}:{port}/health", timeout=10).json()["in_flight"] != 1:
                assert time.monotonic() < deadline, "the upload never started"
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            code = process.wait(60)  # without a shutdown timeout it would wait for the body forever
            status, _, body = read_answer(sock)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert code == 0, log.read_text()
    assert status == 503 and json.loads(body)["error"] == "The server is shutting down; try again in a moment."
    assert log.read_text().rstrip().endswith("Server stopped.")

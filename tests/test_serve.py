"""The web API (``workshop_utils.apps.serve``): endpoints and every bad input through FastAPI's TestClient, the
micro-batcher's isolation of a bad image, and the real server (in a thread, and the CLI in a subprocess)
under 50 concurrent requests, checked against in-process ``Classifier`` scoring.

The model is a head trained on the bundled sample over a random-weights MobileNetV2 at 64x64 (cheap), exported
once per session (tests/conftest.py).
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest
import requests
from fastapi.testclient import TestClient
from PIL import Image

from workshop_utils.apps.serve.app import create_app
from workshop_utils.apps.serve.batcher import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, MicroBatcher
from workshop_utils.apps.serve.server import DEFAULT_SHUTDOWN_TIMEOUT_S, BackgroundServer, bind_socket, port_is_open
from workshop_utils.apps.serve.uploads import (DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BYTES, DEFAULT_MAX_CONCURRENCY,
                                               DEFAULT_MAX_FIELDS)
from workshop_utils.core.formats import SUPPORTED_FORMATS
from workshop_utils.core.errors import InvalidImageError, QueueFullError, ServeError

TOL = 1e-5
FORMATS = re.escape(SUPPORTED_FORMATS)  # "JPEG/PNG/GIF/BMP" (and more when the decoder learns them)
SMALL_LIMIT = 300_000  # bytes: the apps below refuse larger uploads, so the 413 test sends little data


# -- fixtures (the exported stand-in model and the sample's photos are in conftest.py) ----------------
@pytest.fixture(scope="module")
def client(classifier):
    app = create_app(classifier, max_bytes=SMALL_LIMIT)
    with TestClient(app) as test_client:  # runs the lifespan: the batcher thread starts and stops
        yield test_client
    assert not app.state.batcher.running


# -- helpers ----------------------------------------------------------------------------------------------
def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (the shape of a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")


def encoded(fmt: str, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def truncated_jpeg(photos: dict[str, bytes]) -> bytes:
    """A sample photo cut short: the header is fine, TensorFlow cannot decode the pixels."""
    return next(iter(photos.values()))[:600]


def check_answer(answer: dict, expected_scores: np.ndarray, classes: list[str]) -> None:
    scores = np.array([answer["scores"][c] for c in classes])
    np.testing.assert_allclose(scores, expected_scores, atol=TOL, rtol=0)
    assert answer["label"] == classes[int(np.argmax(expected_scores))]
    assert answer["probability"] == pytest.approx(float(np.max(expected_scores)), abs=TOL)


# -- endpoints --------------------------------------------------------------------------------------------
def test_health(client, classifier, exported_model):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["model_loaded"] is True
    assert body["classes"] == classifier.labels and body["model"]["arch"] == "MobilenetV2"
    assert body["max_bytes"] == SMALL_LIMIT and body["max_batch"] == DEFAULT_MAX_BATCH
    assert (body["body_timeout_s"], body["max_concurrency"], body["max_queue"], body["max_form_fields"]) == (
        DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_QUEUE, DEFAULT_MAX_FIELDS)
    assert body["in_flight"] == 0 and body["queued"] == 0
    # the model is named by its folder, never by its path (which tells about the machine)
    assert body["model"]["name"] == classifier.model.name and body["model"]["folder"] == exported_model.name
    assert str(exported_model.parent) not in response.text and "directory" not in body["model"]


def test_predict_raw_body_matches_in_process_scoring(client, classifier, photos, expected):
    for name, data in list(photos.items())[:4]:
        response = client.post("/predict", content=data, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200, response.text
        answer = response.json()
        check_answer(answer, expected[name], classifier.labels)
        assert set(answer["scores"]) == set(classifier.labels)
        assert answer["model"] == {"name": classifier.model.name, "arch": "MobilenetV2"}
        assert answer["time_ms"] > 0 and answer["batch_size"] >= 1 and answer["filename"] is None
        assert answer["image"]["format"] == "JPEG" and answer["image"]["bytes"] == len(data)


def test_predict_multipart_file(client, classifier, photos, expected):
    name, data = next(iter(photos.items()))
    response = client.post("/predict", files={"file": (name, data, "image/jpeg")}, data={"note": "left door"})
    assert response.status_code == 200, response.text
    answer = response.json()
    check_answer(answer, expected[name], classifier.labels)
    assert answer["filename"] == name
    # a file under another field name is taken too (the only file in the form)
    response = client.post("/predict", files={"photo": ("car.jpg", data, "image/jpeg")})
    assert response.status_code == 200 and response.json()["filename"] == "car.jpg"


def test_content_type_and_file_name_do_not_matter(client, classifier, photos, expected):
    """Images are recognised by decoding, not by the declared type or the file name."""
    name, data = next(iter(photos.items()))
    response = client.post("/predict", files={"file": ("notes.txt", data, "text/plain")})
    assert response.status_code == 200
    check_answer(response.json(), expected[name], classifier.labels)
    response = client.post("/predict", files={"file": ("photo.jpg", b"just some text, not a photo", "image/jpeg")})
    assert response.status_code == 415
    assert re.match(r"image 'photo\.jpg': the bytes \(27 bytes, starting .*\) are not a decodable "
                    rf"{FORMATS} image", response.json()["error"])


@pytest.mark.parametrize(
    "case, status, message",
    [
        ("empty body", 400, r"^The request body is empty \(0 bytes\); send the photo's bytes as the body"),
        ("empty file", 400, r"^The uploaded file 'car\.jpg' is empty \(0 bytes\)"),
        ("no file field", 400, r"^The form has no 'file' field \(fields: 'note'\); send the photo as a form field "
                               r"named 'file'"),
        ("broken form", 400, r"^The multipart request has no boundary in its Content-Type header"),
        ("not an image", 415, r"^the bytes \(25 bytes, starting b'%PDF-1\.4'\) are not a decodable "
                              rf"{FORMATS} image"),
        ("unsupported format", 415, rf"^image 'scan\.tif': the bytes are a TIFF image, not a decodable {FORMATS} "
                                    r"image; convert it to JPEG or PNG"),
        ("decompression bomb", 422, r"^image 'bomb\.png': the image is 10000x5000 = 50 MP, over the limit of 40 MP"),
        ("truncated", 422, rf"^image 'cut\.jpg': the bytes are not a decodable {FORMATS} image \(truncated or "
                           r"corrupt"),
        ("too large", 413, r"^The upload is 400,000 bytes, over this server's limit of 300,000 bytes \(293 KB\); "
                           r"send a smaller photo"),
        ("too large form", 413, r"^The upload is 4\d\d,\d\d\d bytes, over this server's limit of 300,000 bytes"),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(
    client, classifier, photos, expected, case, status, message
):
    name, good = next(iter(photos.items()))
    big = good * (400_000 // len(good) + 1)
    requests_by_case = {
        "empty body": dict(content=b""),
        "empty file": dict(files={"file": ("car.jpg", b"", "image/jpeg")}),
        "no file field": dict(headers={"Content-Type": "multipart/form-data; boundary=xyz"},
                              content=b'--xyz\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
                                      b"--xyz--\r\n"),
        "broken form": dict(content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}),
        "not an image": dict(content=b"%PDF-1.4 not an image :-)"),
        "unsupported format": dict(files={"file": ("scan.tif", encoded("TIFF"), "image/tiff")}),
        "decompression bomb": dict(files={"file": ("bomb.png", png_header_claiming(10_000, 5_000), "image/png")}),
        "truncated": dict(files={"file": ("cut.jpg", truncated_jpeg(photos), "image/jpeg")}),
        "too large": dict(content=big[:400_000]),
        "too large form": dict(files={"file": ("big.jpg", big[:400_000], "image/jpeg")}),
    }
    response = client.post("/predict", **requests_by_case[case])
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert re.match(message, response.json()["error"]), response.json()["error"]
    # the server still answers correctly afterwards
    after = client.post("/predict", content=good)
    assert after.status_code == 200
    check_answer(after.json(), expected[name], classifier.labels)


def test_unknown_routes_and_methods_get_json_errors(client):
    response = client.get("/predict")
    assert response.status_code == 405
    assert response.json()["error"].startswith("GET is not allowed on '/predict': send the photo with POST /predict")
    response = client.get("/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == ("No page at '/nothing-here': the API has POST /predict, GET /health and the "
                                        "page GET /.")


def test_page_has_the_upload_form_and_calls_predict(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    form = re.search(r"<form[^>]*>", page).group(0)
    assert 'enctype="multipart/form-data"' in form and 'method="post"' in form and 'action="predict"' in form
    assert re.search(r'<input id="file" name="file" type="file" accept="image/\*">', page)
    assert 'const PREDICT_URL = "predict";' in page and "fetch(PREDICT_URL, { method: \"POST\", body: form })" in page
    assert 'form.append("file", file, file.name)' in page
    assert urljoin("http://127.0.0.1:8000/", "predict") == "http://127.0.0.1:8000/predict"  # relative: /predict
    for element in ('id="preview"', 'id="label"', 'id="bars"', 'id="error" role="alert"'):
        assert element in page, element


def test_create_app_loads_a_folder_and_checks_its_arguments(exported_model, tmp_path):
    app = create_app(exported_model, warm_up=False)
    assert app.state.classifier.labels and app.state.max_bytes == DEFAULT_MAX_BYTES
    with pytest.raises(ValueError, match="max_bytes must be at least 1, got 0"):
        create_app(app.state.classifier, max_bytes=0)
    with pytest.raises(ValueError, match="body_timeout must be above 0 seconds, got 0"):
        create_app(app.state.classifier, body_timeout=0)
    with pytest.raises(ValueError, match="max_concurrency must be at least 1, got 0"):
        create_app(app.state.classifier, max_concurrency=0)
    with pytest.raises(ValueError, match="max_fields must be 0 or more, got -1"):
        create_app(app.state.classifier, max_fields=-1)
    with pytest.raises(ValueError, match="max_queue must be at least 1, got 0"):
        create_app(app.state.classifier, max_queue=0)
    from workshop_utils.core.errors import ModelFolderError

    with pytest.raises(ModelFolderError, match=r"Model folder '.*nowhere' does not exist"):
        create_app(tmp_path / "nowhere")


# -- micro-batching ---------------------------------------------------------------------------------------
class GatedScorer:
    """Wraps predict_proba: records each call's batch size; the first call waits until ``release`` is set."""

    def __init__(self, classifier):
        self.classifier, self.calls, self.release, self.entered = classifier, [], threading.Event(), threading.Event()

    def __call__(self, images, names):
        self.calls.append(len(images))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(60), "the test never released the gate"
        return self.classifier.predict_proba(images, names)


def test_batcher_scores_queued_images_together_and_a_bad_one_fails_alone(classifier, photos, expected):
    scorer = GatedScorer(classifier)
    batcher = MicroBatcher(scorer, max_batch=8, max_wait=0.0).start()
    try:
        names = list(photos)[:5]
        first = batcher.submit(photos[names[0]], names[0])
        assert scorer.entered.wait(60)  # the worker is busy with the first image: the next ones queue up
        jobs = [(n, batcher.submit(photos[n], n)) for n in names[1:3]]
        bad = batcher.submit(truncated_jpeg(photos), "cut.jpg")
        jobs += [(n, batcher.submit(photos[n], n)) for n in names[3:5]]
        scorer.release.set()
        np.testing.assert_allclose(first.result(60).scores, expected[names[0]], atol=TOL, rtol=0)
        with pytest.raises(InvalidImageError, match=r"^image 'cut\.jpg': the bytes are not a decodable .*\(truncated"):
            bad.result(60)
        for name, future in jobs:
            result = future.result(60)
            np.testing.assert_allclose(result.scores, expected[name], atol=TOL, rtol=0)
            assert result.batch_size == 1  # rescored one by one after the batch of 5 failed
        assert scorer.calls[:2] == [1, 5] and sorted(scorer.calls[2:]) == [1, 1, 1, 1, 1]
    finally:
        batcher.stop()
    assert not batcher.running
    with pytest.raises(RuntimeError, match="The scoring worker is not running"):
        batcher.submit(b"x")


def test_batcher_respects_max_batch(classifier, photos, expected):
    scorer = GatedScorer(classifier)
    batcher = MicroBatcher(scorer, max_batch=3, max_wait=0.0).start()
    try:
        names = list(photos)[:8]
        futures = [batcher.submit(photos[names[0]], names[0])]
        assert scorer.entered.wait(60)
        futures += [batcher.submit(photos[n], n) for n in names[1:]]
        scorer.release.set()
        results = [f.result(60) for f in futures]
    finally:
        batcher.stop()
    assert scorer.calls == [1, 3, 3, 1]
    assert [r.batch_size for r in results] == [1, 3, 3, 3, 3, 3, 3, 1]
    for name, result in zip(names, results):
        np.testing.assert_allclose(result.scores, expected[name], atol=TOL, rtol=0)


def test_batcher_queue_is_bounded(classifier, photos, expected):
    scorer = GatedScorer(classifier)
    batcher = MicroBatcher(scorer, max_batch=8, max_wait=0.0, max_queue=2).start()
    try:
        names = list(photos)[:3]
        futures = [batcher.submit(photos[names[0]], names[0])]
        assert scorer.entered.wait(60)  # the worker is busy: two more may wait, a third is refused at once
        futures += [batcher.submit(photos[n], n) for n in names[1:3]]
        assert batcher.queued == 2
        with pytest.raises(QueueFullError, match=r"^The scoring queue is full: 2 images wait for the model "
                                                       r"\(the server's --max-queue\)\.$"):
            batcher.submit(photos[names[0]], names[0])
        assert batcher.refused == 1
        scorer.release.set()
        for name, future in zip(names, futures):
            np.testing.assert_allclose(future.result(60).scores, expected[name], atol=TOL, rtol=0)
        batcher.submit(photos[names[0]], names[0]).result(60)  # room again once the queue drained
    finally:
        scorer.release.set()
        batcher.stop()


def test_batcher_argument_checks():
    with pytest.raises(ValueError, match="max_batch must be at least 1, got 0"):
        MicroBatcher(lambda images, names: None, max_batch=0)
    with pytest.raises(ValueError, match="max_wait must be 0 or more seconds, got -1"):
        MicroBatcher(lambda images, names: None, max_wait=-1)
    with pytest.raises(ValueError, match="max_queue must be at least 1, got 0"):
        MicroBatcher(lambda images, names: None, max_queue=0)


# -- the real server --------------------------------------------------------------------------------------
def test_real_server_answers_50_concurrent_requests(classifier, photos, expected):
    """50 requests from 10 threads to a real uvicorn on 127.0.0.1 (two of them truncated photos)."""
    app = create_app(classifier, max_bytes=SMALL_LIMIT)
    server = BackgroundServer(app).start()
    names = list(photos)
    work = [(names[i % len(names)], photos[names[i % len(names)]]) for i in range(48)]
    work[7] = work[31] = ("cut.jpg", truncated_jpeg(photos))
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/" and port_is_open("127.0.0.1", server.port)

        def call(item):
            name, data = item
            return name, requests.post(server.url + "predict", files={"file": (name, data)}, timeout=120)

        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(call, work + work[:2], timeout=300))
        assert len(answers) == 50
        for name, response in answers:
            if name == "cut.jpg":
                assert response.status_code == 422 and "truncated or corrupt" in response.json()["error"]
                continue
            assert response.status_code == 200, response.text
            check_answer(response.json(), expected[name], classifier.labels)
            assert response.json()["filename"] == name
        # over the limit: the real server answers 413 with JSON (not a dropped connection), then keeps serving
        too_big = requests.post(server.url + "predict", data=b"\xff" * (SMALL_LIMIT + 1), timeout=60)
        assert too_big.status_code == 413 and "over this server's limit of 300,000 bytes" in too_big.json()["error"]
        health = requests.get(server.url + "health", timeout=60).json()
        assert health["status"] == "ok" and health["scored"]["images"] >= 48
    finally:
        server.stop()
    assert not server.running and not port_is_open("127.0.0.1", server.port)
    assert not app.state.batcher.running and not app.state.batcher.thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name == f"workshop-serve-{server.port}"]


def test_port_in_use_is_a_clear_error():
    taken = bind_socket("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=rf"^Cannot listen on 127\.0\.0\.1:{port} \(.*\); choose another "
                                                   r"--port \(or --port 0 for any free one\)\."):
            bind_socket("127.0.0.1", port)
    finally:
        taken.close()


def test_serve_command_line(exported_model, classifier, photos, expected, tmp_path):
    """`python -m workshop_utils serve MODEL --port 0` prints its address, answers, and stops on Ctrl+C."""
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "workshop_utils", "serve", str(exported_model), "--port", "0", "--max-bytes",
             "200000"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline, url = time.monotonic() + 180, None
        while url is None and time.monotonic() < deadline and process.poll() is None:
            found = re.search(r"Web page: (http://127\.0\.0\.1:\d+/)", log.read_text())
            url = found.group(1) if found else None
            time.sleep(0.2)
        assert url, f"the server printed no address:\n{log.read_text()}"
        while time.monotonic() < deadline:  # the address is printed just before uvicorn starts
            try:
                health = requests.get(url + "health", timeout=10)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        assert health.json()["max_bytes"] == 200_000
        name, data = next(iter(photos.items()))
        answer = requests.post(url + "predict", data=data, timeout=60)
        check_answer(answer.json(), expected[name], classifier.labels)
        bad = requests.post(url + "predict", data=b"not a photo", timeout=60)
        assert bad.status_code == 415 and f"are not a decodable {SUPPORTED_FORMATS} image" in bad.json()["error"]
        assert requests.get(url + "health", timeout=10).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log.read_text()
    assert "Serving MobilenetV2" in log.read_text() and log.read_text().rstrip().endswith("Server stopped.")


def test_serve_command_line_reports_bad_arguments_in_one_line(exported_model, tmp_path, capsys):
    from workshop_utils.apps import cli

    assert cli.main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert re.fullmatch(r"error: Model folder '.*nope' does not exist\. Re-export it .*\n", capsys.readouterr().err)
    taken = bind_socket("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        assert cli.main(["serve", str(exported_model), "--port", str(port)]) == 2
        assert capsys.readouterr().err.startswith(f"error: Cannot listen on 127.0.0.1:{port} (")
    finally:
        taken.close()
    with pytest.raises(SystemExit):
        cli.main(["serve", str(exported_model), "--max-bytes", "0"])
    assert "--max-bytes: expected a number above 0, got 0" in capsys.readouterr().err
    # a bad address: one line, exit code 2, before the model is loaded (tmp_path / "nope" is not a model)
    for flags, message in [
        (["--port", "99999"], "error: --port must be a whole number from 0 to 65535 (0: any free port), got 99999.\n"),
        (["--port", "-1"], "error: --port must be a whole number from 0 to 65535 (0: any free port), got -1.\n"),
        (["--host", "no..such..host"], "error: --host 'no..such..host' cannot be resolved to an address ("),
    ]:
        assert cli.main(["serve", str(tmp_path / "nope"), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    assert err.endswith("; use 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or a host name this machine "
                        "resolves.\n")
    for flag, value, message in [("--body-timeout", "0", "expected a number above 0, got 0"),
                                 ("--max-concurrency", "0", "expected a number above 0, got 0"),
                                 ("--max-queue", "many", "expected a whole number, got 'many'"),
                                 ("--shutdown-timeout", "-1", "expected a number above 0, got -1")]:
        with pytest.raises(SystemExit):
            cli.main(["serve", str(exported_model), flag, value])
        assert f"{flag}: {message}" in capsys.readouterr().err


def test_serve_command_line_defaults_are_the_servers(capsys):
    """The CLI's defaults (shown in --help) are serve's own, so the two cannot drift apart."""
    from workshop_utils.apps import cli

    args = cli.build_parser().parse_args(["serve", "model"])
    assert (args.max_bytes, args.body_timeout, args.max_concurrency, args.max_queue, args.shutdown_timeout) == (
        DEFAULT_MAX_BYTES, DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_QUEUE,
        DEFAULT_SHUTDOWN_TIMEOUT_S)
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for text in ("(default: 30.0)", "(default: 32)", "(default: 64)", "(default: 10.0)", "(default: 10485760)",
                 "(default: 8000)", "(default: 127.0.0.1)"):
        assert text in shown, text


def test_bench_serve_harness(exported_model, tmp_path):
    """`python -m workshop_utils bench --serve` end to end on tiny settings (no timing asserted)."""
    from workshop_utils.tooling import bench

    result = bench.run_serve_benchmark(tmp_path, model_dir=exported_model, clients=3, requests_total=12, photos=6,
                                       rounds=1)
    assert Path(result["path"]).is_file() and Path(result["path"]).parent == tmp_path
    assert result["serve_requests"] == 12 and result["serve_failed"] == 0 and result["serve_wrong_labels"] == 0
    assert result["serve_max_score_difference"] < TOL
    for key in ("serve_images_per_second", "serve_p50_ms", "serve_p95_ms", "inprocess_single_images_per_second",
                "inprocess_batch_images_per_second", "serve_vs_inprocess_single", "serve_vs_inprocess_batch"):
        assert result[key] > 0, key
    assert result["serve_p50_ms"] <= result["serve_p95_ms"] and 1 <= result["serve_largest_batch"] <= 3
    # /health was measured while a many-field form was posted; the form was refused with a short error
    assert result["serve_form_status"] == 400 and 0 < result["serve_form_answer_bytes"] <= 1024
    assert result["serve_form_parts"] > 100_000
    for key in ("serve_health_alone_p50_ms", "serve_health_during_form_p50_ms", "serve_health_during_form_max_ms"):
        assert result[key] > 0, key
    table = bench.serve_table(result)
    assert "| web API, 3 concurrent clients" in table and "Web API vs in-process throughput" in table
    assert re.search(r"/health while a 10 MB form of [\d,]+ fields is posted: p50 \d+ ms, max \d+ ms \(alone: p50 "
                     r"\d+ ms\); the form gets HTTP 400 \(\d+ bytes\)\.", table), table


# -- flip TTA and ensembles (issue 19 items 4, 5) ----------------------------------------------------------------
def test_serve_an_ensemble_with_tta(tmp_path):
    """/predict answers the average of both members' plain-and-mirrored scores; /health names the members (folder
    names only) and says TTA is on."""
    import image_cases
    from test_tta import CLASSES, plain_folder, png, position_model

    from workshop_utils.scoring import load_scorer

    folders = [plain_folder(tmp_path / "lite0", position_model(0)), plain_folder(tmp_path / "lite2", position_model(1))]
    scorer = load_scorer(folders[0], folders[1:], tta=True)
    photo = png(image_cases.asymmetric_photo())
    expected = scorer.predict_proba([photo])[0]
    plain = load_scorer(folders[0], folders[1:], tta=False).predict_proba([photo])[0]
    assert np.abs(expected - plain).max() > 1e-3  # the control: TTA changes these scores
    with TestClient(create_app(scorer, warm_up=False)) as client:
        health = client.get("/health").json()
        assert health["classes"] == CLASSES and health["model"]["tta"] is True
        assert health["model"]["ensemble"] == [{"folder": "lite0", "arch": "position0", "tta": True},
                                               {"folder": "lite2", "arch": "position1", "tta": True}]
        assert str(tmp_path) not in json.dumps(health)
        answer = client.post("/predict", content=photo).json()
    np.testing.assert_allclose([answer["scores"][c] for c in CLASSES], expected, atol=TOL)
    assert answer["model"]["arch"] == "position0 + position1"

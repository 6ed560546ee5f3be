"""Run the web API (app.py) with uvicorn: ``python -m workshop_utils serve MODEL_DIR`` (:func:`serve`) or in a
thread of a notebook kernel (:class:`BackgroundServer`); both shut down gracefully, within a time limit."""
import atexit
import contextlib
import signal
import socket
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

try:  # the serving packages of requirements.txt: first, so that a missing one says how to install it
    import python_multipart  # noqa: F401  (Starlette's form parser needs it)
    import uvicorn
    from fastapi import FastAPI
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"Serving needs FastAPI, uvicorn and python-multipart ({_exc}); install them with `pip install "
                      "-r requirements.txt` (or `pip install fastapi uvicorn python-multipart`).") from _exc

from workshop_utils.apps.serve.app import create_app, model_info
from workshop_utils.core.errors import ServeError
from workshop_utils.scoring import load_scorer

DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0  # seconds a graceful shutdown waits for open requests before cancelling them


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on host:port (0: any free port); a bad or taken address: ServeError naming the flag."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ServeError(f"--port must be a whole number from 0 to 65535 (0: any free port), got {port!r}.")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                                   flags=socket.AI_PASSIVE)
    except (OSError, ValueError) as exc:  # gaierror, or a name that is not a valid host name (UnicodeError)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ServeError(f"--host {host!r} cannot be resolved to an address ({reason}); use 127.0.0.1 (this "
                         "machine only), 0.0.0.0 (every interface) or a host name this machine resolves.") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP proto: asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = "choose another --port (or --port 0 for any free one)" if port else "check --host"
        raise ServeError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}); {hint}.") from exc
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    return f"http://{shown}:{port}/"


_RUNNING: "weakref.WeakSet[BackgroundServer]" = weakref.WeakSet()


class BackgroundServer:
    """The app served by uvicorn in a daemon thread (e.g. of a notebook kernel). ``stop()`` cancels requests still
    open after ``shutdown_timeout`` s and closes the port; servers still running at interpreter exit are stopped."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 shutdown_timeout: float = 5.0) -> None:
        self.app, self.host, self.requested_port, self.log_level = app, host, int(port), log_level
        self.shutdown_timeout, self.port, self._error = shutdown_timeout, None, None
        self.forced = False  # True when the last stop() had to force the exit (the graceful one took too long)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:  # http://host:port/ of the running server
        if self.port is None:
            raise RuntimeError("The server is not started; call start() first.")
        return _url(self.host, self.port)

    @property
    def running(self) -> bool:  # while the server thread runs
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 120.0) -> "BackgroundServer":
        """Bind the port, start the server thread and wait until it serves (at most ``timeout`` seconds)."""
        if self.running:
            return self
        sock = bind_socket(self.host, self.requested_port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=self.log_level, access_log=False, lifespan="on",
                                timeout_graceful_shutdown=self.shutdown_timeout)
        self._server = server = uvicorn.Server(config)
        self._error = None

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # SystemExit when the app fails to start: report it from start()
                self._error = exc
            finally:
                sock.close()

        self._thread = threading.Thread(target=run, name=f"workshop-serve-{self.port}", daemon=True)
        self._thread.start()
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                raise ServeError(f"The server on port {self.port} stopped while starting"
                                 + (f": {self._error!r}" if self._error else "; see the log above."))
            if time.monotonic() > deadline:
                self.stop()
                raise ServeError(f"The server on port {self.port} did not start within {timeout:g} s.")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Shut down gracefully (finish requests, stop the batcher), wait for the thread, close the port."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self.forced = self._thread.is_alive()
            if self.forced:
                self._server.force_exit = True
                self._thread.join(5)
            if self._thread.is_alive():
                raise ServeError(f"The server thread on port {self.port} did not stop within {timeout:g} s.")
        _RUNNING.discard(self)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"BackgroundServer({f'running at {self.url}' if self.running else 'stopped'})"


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop(timeout=5)


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:  # something accepts TCP connections there
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", *,
          shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S, tta: bool | None = None,
          ensemble: Sequence[str | Path] = (), **limits: float) -> int:
    """``python -m workshop_utils serve``: load the export (``tta``/``ensemble`` as in predict), serve it with
    create_app's ``limits`` until Ctrl+C or SIGTERM (requests open after ``shutdown_timeout`` s are cancelled)."""
    sock = bind_socket(host, port)  # first: a bad or taken address fails at once, not after loading the model
    try:
        classifier = load_scorer(model_dir, ensemble, tta=tta)
        app = create_app(classifier, **limits)
        url = _url(host, sock.getsockname()[1])
        info = model_info(classifier)
        print(f"Serving {info['arch']} ({len(info['classes'])} classes: {', '.join(info['classes'])}) "
              f"from {', '.join(str(d) for d in (model_dir, *ensemble))}"
              + (" with flip test-time augmentation" if info["tta"] else ""))
        print(f"Web page: {url}   API: POST {url}predict   health: {url}health   (Ctrl+C to stop)", flush=True)
        if host in ("0.0.0.0", "::"):
            print("Note: listening on all interfaces, so other machines on the network can reach it.")
        config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=shutdown_timeout)
        # uvicorn re-raises SIGINT/SIGTERM to the handler it found after its graceful shutdown: for SIGTERM too
        # that is Python's Ctrl+C handler here, so either ends as a KeyboardInterrupt caught below
        main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
        try:
            with contextlib.suppress(KeyboardInterrupt):
                uvicorn.Server(config).run(sockets=[sock])
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
    finally:
        sock.close()
    print("Server stopped.")
    return 0


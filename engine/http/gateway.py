"""Runs the gateway app with uvicorn on a thread of the serving process (`--http-port`)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpTls:
    """The gRPC server's certificate files, used for HTTPS too."""

    cert: Path
    key: Path
    client_ca: Path | None = None


class HttpGateway:
    """uvicorn serving `app` on host:port (0: a free port, read `.port`) until stop()."""

    def __init__(self, app: FastAPI, host: str, port: int, tls: HttpTls | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as error:
            self._socket.close()
            raise OSError(
                f"could not bind the HTTP gateway to {host}:{port}: {error.strerror} "
                "(another process on that port? pick another --http-port, or 0 for a free one)"
            ) from None
        self._socket.listen(128)
        self._socket.set_inheritable(True)
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        ssl: dict = {}
        if tls is not None:
            import ssl as ssl_module

            ssl = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
            if tls.client_ca is not None:
                ssl |= {
                    "ssl_ca_certs": str(tls.client_ca),
                    "ssl_cert_reqs": ssl_module.CERT_REQUIRED,
                }
        config = uvicorn.Config(
            app,
            log_config=None,  # the process's logging (--log-level / --log-format) applies
            access_log=False,  # the interceptor writes one access line per call, gRPC or HTTP
            timeout_graceful_shutdown=5,
            **ssl,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="aisle-http"
        )
        self.scheme = "https" if tls is not None else "http"

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the HTTP gateway failed to start; see the log above")
            if time.monotonic() > deadline:
                raise TimeoutError("the HTTP gateway did not start")
            time.sleep(0.01)
        log.info("HTTP gateway on %s://%s:%d (playground: /ui)", self.scheme, self.host, self.port)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()

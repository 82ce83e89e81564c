"""One speculator for several API-server processes (``vllm serve --api-server-count N``).

With ``--api-server-count`` above 1, vLLM's main process does not serve HTTP: it starts N API-server
processes (named ``ApiServer_0`` ...) and the engine. Loading a speculator in each of them would hold N
copies (N x 16 GB for an 8B speculator on ``cuda:0``), so the roles are split:

* the **host** is the process without a multiprocessing parent (vLLM's main process; with one API server it
  is also the API server). It owns the :class:`~specprefill.server.service.ScoringService` and its
  speculator, and a :class:`ScorerHost` that answers jobs on a private Unix socket (Linux abstract
  namespace, authenticated with a random key). It exports the address and key in
  :data:`ADDRESS_ENV` / :data:`KEY_ENV` before vLLM spawns its children;
* a **client** is an ``ApiServer_*`` child that finds those variables: its :class:`ForwardingService` has
  the same queue, deadline and fallback reasons as the local service, but runs each job on the host's
  speculator (so micro-batches gather requests from every API server);
* any other child (engine core, tensor-parallel workers) has no role and loads nothing.

Jobs and results travel pickled (:mod:`multiprocessing.connection`, HMAC-authenticated), so jobs must be
module-level callables with picklable arguments, as :mod:`specprefill.server.hooks` and
:mod:`specprefill.server.endpoint` build them. Faults stay typed: an unreachable or stalled host, or a job
that fails there, gives the caller a :class:`~specprefill.server.service.ScoringUnavailableError` and the
request runs unpruned with that reason.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import pickle
import secrets
import threading
from collections.abc import Mapping
from multiprocessing.connection import Client, Connection, Listener
from typing import Any, Literal, TypeVar

from specprefill.errors import SpeculatorError
from specprefill.server.queueing import Job
from specprefill.server.service import ScoringService, ScoringUnavailableError
from specprefill.server.settings import ServerSettings
from specprefill.speculator.base import Speculator

__all__ = [
    "ADDRESS_ENV",
    "API_SERVER_PREFIX",
    "KEY_ENV",
    "ForwardingService",
    "ProcessRole",
    "ScorerHost",
    "current_role",
    "get_service",
    "process_role",
    "service_for_process",
    "start_host",
]

logger = logging.getLogger("specprefill.server")

T = TypeVar("T")

ProcessRole = Literal["host", "client"]

ADDRESS_ENV = "SPECPREFILL_SCORER_ADDRESS"
"""Set by the host for the processes it starts: the scorer socket (``@name`` = Linux abstract namespace)."""

KEY_ENV = "SPECPREFILL_SCORER_KEY"
"""Set by the host: the hex key that authenticates a client to the scorer socket."""

API_SERVER_PREFIX = "ApiServer_"
"""vLLM names its API-server processes ``ApiServer_<index>`` (``vllm.v1.utils.APIServerProcessManager``)."""


def process_role(*, has_parent: bool, name: str, environ: Mapping[str, str]) -> ProcessRole | None:
    """Which part of server-side pruning a process plays (pure; see the module docstring).

    Args:
        has_parent: The process was started by :mod:`multiprocessing` (vLLM's children are).
        name: Its multiprocessing name.
        environ: Its environment.

    Returns:
        ``"host"`` (owns the speculator), ``"client"`` (forwards to the host) or None (loads nothing).

    """
    if not has_parent:
        return "host"
    if name.startswith(API_SERVER_PREFIX) and environ.get(ADDRESS_ENV) and environ.get(KEY_ENV):
        return "client"
    if name.startswith(API_SERVER_PREFIX):
        logger.warning(
            "specprefill: API server %s found no scoring host (%s unset); its requests are served unpruned",
            name,
            ADDRESS_ENV,
        )
    return None


def current_role() -> ProcessRole | None:
    """:func:`process_role` of this process."""
    return process_role(
        has_parent=multiprocessing.parent_process() is not None,
        name=multiprocessing.current_process().name,
        environ=os.environ,
    )


def service_for_process(settings: ServerSettings) -> ScoringService:
    """The scoring service of this process: a :class:`ForwardingService` in a client, else a local one."""
    if current_role() == "client":
        return ForwardingService(settings, os.environ[ADDRESS_ENV], bytes.fromhex(os.environ[KEY_ENV]))
    return ScoringService(settings)


def _socket_address(address: str) -> str:
    """``@name`` (what the environment can hold) to the abstract-namespace form (a leading NUL byte)."""
    return "\0" + address[1:] if address.startswith("@") else address


def _pickled_reply(reply: tuple[str, Any]) -> bytes:
    """``reply`` pickled if it survives a round trip, else its error as a pickled ScoringUnavailableError."""
    try:
        data = pickle.dumps(reply)
        pickle.loads(data)
    except Exception as exc:  # an unpicklable result or an exception class that cannot be rebuilt
        detail = reply[1] if reply[0] == "err" else exc
        return pickle.dumps(("err", ScoringUnavailableError("error", f"{type(detail).__name__}: {detail}")))
    return data


class ScorerHost:
    """Answers jobs from API-server processes with the local :class:`ScoringService` (one thread per client).

    Each client first gets ``("ready", None)`` once the speculator is loaded (``("load_failed", why)`` if
    it is not). Then it sends micro-batches: one message holding its jobs, each pickled on its own. They
    are queued on the service together (the same bound and micro-batches as local jobs), and one message
    answers them in order, each reply pickled on its own: ``("ok", result)`` or ``("err", exception)``.

    Args:
        service: The service whose speculator answers.
        address: Socket path or ``@name``; default a fresh abstract-namespace name.
        authkey: Shared key; default 32 random bytes.

    """

    def __init__(self, service: ScoringService, *, address: str | None = None, authkey: bytes | None = None) -> None:
        self.service = service
        self.authkey = authkey or secrets.token_bytes(32)
        name = address or f"@specprefill-scorer-{os.getpid()}-{secrets.token_hex(8)}"
        self._listener = Listener(_socket_address(name), family="AF_UNIX", authkey=self.authkey)
        self.address = name if name.startswith("@") else str(self._listener.address)
        self._thread: threading.Thread | None = None
        self._closed = False
        self.clients = 0
        """How many API-server connections were accepted."""

    def environment(self) -> dict[str, str]:
        """The variables that make a child an API-server client of this host."""
        return {ADDRESS_ENV: self.address, KEY_ENV: self.authkey.hex()}

    def start(self) -> None:
        """Accept clients on a daemon thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._accept, name="specprefill-scorer-host", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop accepting clients (open connections end when their client goes)."""
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except (OSError, EOFError, multiprocessing.AuthenticationError) as exc:
                if self._closed:
                    return
                logger.warning("specprefill: refused a scorer connection: %s: %s", type(exc).__name__, exc)
                continue
            self.clients += 1
            threading.Thread(target=self._serve, args=(conn,), name="specprefill-scorer-client", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        with conn:
            try:
                usable = self.service.wait_loaded()
                conn.send(("ready", None) if usable else ("load_failed", self.service.load_error))
                while usable:
                    try:
                        payloads = conn.recv()
                    except EOFError:
                        return
                    pending = [self._submit(payload) for payload in payloads]  # queued together
                    conn.send([self._answer(item) for item in pending])
            except OSError:  # the client went away (e.g. it gave up at its deadline)
                return

    def _submit(self, payload: bytes) -> concurrent.futures.Future[Any] | BaseException:
        try:
            fn = pickle.loads(payload)
        except Exception as exc:  # a job this process cannot unpickle: it alone fails
            return ScoringUnavailableError("error", f"unreadable job: {type(exc).__name__}: {exc}")
        try:
            return self.service.submit(fn).future
        except BaseException as exc:  # queue_full or load_failed: answered in order with the others
            return exc

    @staticmethod
    def _answer(item: concurrent.futures.Future[Any] | BaseException) -> bytes:
        if isinstance(item, BaseException):
            return _pickled_reply(("err", item))
        try:
            return _pickled_reply(("ok", item.result()))
        except BaseException as exc:  # handed to the client, which serves the request unpruned
            return _pickled_reply(("err", exc))


class ForwardingService(ScoringService):
    """An API-server process's scoring service whose jobs run on the :class:`ScorerHost`'s speculator.

    Same contract as :class:`ScoringService` (bounded queue, deadline, typed reasons); its worker thread
    connects to the host instead of loading a model. A host that cannot load its speculator makes every
    request fall back with ``load_failed``; a host that stops answering within ``deadline_seconds`` gives
    ``deadline`` (the connection is dropped and re-opened for the next job); a lost connection gives
    ``error``.

    Args:
        settings: Limits (the queue, the deadline) of this process.
        address: The host's socket (:data:`ADDRESS_ENV`).
        authkey: The host's key (:data:`KEY_ENV`).

    """

    def __init__(self, settings: ServerSettings, address: str, authkey: bytes) -> None:
        super().__init__(settings, loader=self._no_local_model)
        self.address = address
        self._authkey = authkey
        self._conn: Connection | None = None

    @staticmethod
    def _no_local_model() -> Speculator:
        raise SpeculatorError("a forwarding service loads no speculator")

    def _ready_message(self) -> str:
        return f"using the scoring host's speculator {self.settings.speculator!r} (ready)"

    def _connect(self) -> Connection:
        conn = Client(_socket_address(self.address), family="AF_UNIX", authkey=self._authkey)
        status, detail = conn.recv()
        if status != "ready":
            conn.close()
            raise SpeculatorError(f"the scoring host could not load its speculator: {detail}")
        return conn

    def _open(self) -> None:
        self._conn = self._connect()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run_batch(self, jobs: list[Job]) -> None:
        """Send the micro-batch as one message (the host queues it together) and read its answers.

        Every caller of the batch queued its job before now, so after ``deadline_seconds`` all of them
        have given up: a host silent that long loses the connection (re-opened for the next batch).
        """
        sent, payloads = [], []
        for job in jobs:
            try:
                payloads.append(pickle.dumps(job.fn))
            except Exception as exc:  # the job cannot be pickled: it alone fails
                job.future.set_exception(exc)
            else:
                sent.append(job)
        if not sent:
            return
        try:
            conn = self._conn or self._connect()
            self._conn = conn
            conn.send(payloads)
            if not conn.poll(self.settings.deadline_seconds):
                self._drop()
                self._fail(sent, ScoringUnavailableError(
                    "deadline", f"the scoring host did not answer in {self.settings.deadline_seconds:g}s"
                ))  # fmt: skip
                return
            replies = conn.recv()
        except (OSError, EOFError, multiprocessing.AuthenticationError, SpeculatorError) as exc:
            self._drop()
            lost = ScoringUnavailableError("error", f"the scoring host is unreachable: {exc}")
            lost.__cause__ = exc
            self._fail(sent, lost)
            return
        for job, reply in zip(sent, replies, strict=True):
            status, value = pickle.loads(reply)
            if status == "ok":
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

    @staticmethod
    def _fail(jobs: list[Job], error: BaseException) -> None:
        for job in jobs:
            job.future.set_exception(error)


_host: ScorerHost | None = None
_host_lock = threading.Lock()


def start_host(service: ScoringService) -> ScorerHost:
    """Start this process's :class:`ScorerHost` once and export its address and key to later children."""
    global _host
    with _host_lock:
        if _host is None:
            _host = ScorerHost(service)
            _host.start()
            os.environ.update(_host.environment())
            logger.debug("specprefill: scoring host listening on %s", _host.address)
        return _host


_service: ScoringService | None = None
_service_lock = threading.Lock()


def get_service() -> ScoringService:
    """The process-wide :class:`ScoringService`, built from :meth:`ServerSettings.load` on first use.

    In an API-server process that vLLM started beside others (``--api-server-count`` above 1) it is a
    :class:`ForwardingService`: jobs run on the one speculator of the scoring host.

    The worker thread (and with it the speculator) starts on the first :meth:`ScoringService.run`, or when
    the caller calls :meth:`ScoringService.start`.
    """
    global _service
    with _service_lock:
        if _service is None:
            _service = service_for_process(ServerSettings.load())
        return _service

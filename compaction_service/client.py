"""`RemoteCompactor`: the LSM's `Compactor` that offloads compactions to compaction services.

Endpoints come from an `EndpointResolver` (`compaction_service.resolver`), which refreshes them in
the background: the compactor takes in its latest list at every submit. Per spec: pick, among the
listed endpoints whose circuit breaker is closed, the one with the least outstanding work (input
bytes of the specs in flight there; ties: fewest calls in flight, then the one that got work
least recently), log `invokeCompactionService ...`, and call Compact with a deadline. The returned
future gets the remote result, or, on any failure (UNAVAILABLE, DEADLINE_EXCEEDED,
RESOURCE_EXHAUSTED, any other status, a result that `files.validate_result` refuses), the result
of running the same spec locally: nothing is lost. Failures that cost no time (UNAVAILABLE,
RESOURCE_EXHAUSTED) first try the other endpoints. A failure, or finding no endpoint, asks the
resolver to refresh soon. A spec whose DB lives in this process (memory://) always runs locally.
A result the service computed is marked `remote` (the DB counts where compactions ran by that
mark, also when a compaction has no outputs); a local run's result is not.

An endpoint that leaves the list gets no new work; its calls in flight go on (its channel closes
once they are over) and end like any call: a result, or a retry elsewhere, or a local run. One
that joins gets work at once (it has none outstanding). With no endpoint at all, compactions run
locally (fallback reason `no_endpoint`) while the resolver keeps looking.

Counters (`stats`): remote results and failures (by status code), fallbacks and their reasons
(`FALLBACK_REASONS`), bytes both ways and CPU seconds on each side.

Invariants:
- The future is completed exactly once, with exactly one result. Before a rejected remote result
  is replaced by a local run, and when a result arrives after the caller cancelled, every file
  under the spec's output prefix is deleted (`files.delete_outputs`); anything a lost call left
  behind is removed by the service (on deadline or cancel) or, failing that, by the DB's garbage
  collector (docs/lsm-protocol.md).
- Cancelling the future (the DB abandons a compaction) cancels the remote call, which makes the
  service stop the work and delete its partial outputs.
- An endpoint's outstanding bytes and calls count exactly the calls started there and not yet
  completed (cancelled ones included until gRPC reports them done).

`remote_compactor` is the `remote` compaction mode's factory: it builds a compactor from backend
options (`OPTIONS`), sharing the process's resolver of the address, and has its fallbacks
exported with the process's metrics (`compaction_service.metrics.CLIENT_METRICS`). The runtime
registers it where it assembles a program (`streamlet.compaction`), with the lookup for `job:`
addresses.
"""

import dataclasses
import itertools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import grpc
from fsspec.core import split_protocol
from grpc_health.v1 import health_pb2, health_pb2_grpc

from compaction_service.breaker import CircuitBreaker
from compaction_service.convert import result_from_proto, spec_to_proto
from compaction_service.metrics import CLIENT_METRICS
from compaction_service.proto import compaction_pb2 as pb
from compaction_service.proto import compaction_pb2_grpc as pb_grpc
from compaction_service.resolver import DEFAULT_INTERVAL_S, EndpointResolver, shared_resolver
from compaction_service.subcompactions import input_bytes
from statebackend.dfs import filesystem
from statebackend.lsm.compaction_job import CompactionResult, CompactionSpec
from statebackend.lsm.compactor import IN_PROCESS_PROTOCOLS, Compactor, LocalCompactor
from statebackend.lsm.files import delete_outputs, validate_result

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CompactionService"].full_name
# Failures after which another endpoint is tried before running locally (they cost no time).
_RETRY_ELSEWHERE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# Why a compaction ran locally: no endpoint listed, every listed one backing off (its breaker
# open), the last remote failure's status (by `_REASON_OF_CODE`, `other` for the rest), or a
# remote result that failed validation.
FALLBACK_REASONS = (
    "no_endpoint",
    "breaker_open",
    "unavailable",
    "deadline",
    "resource_exhausted",
    "invalid_result",
    "other",
)
_REASON_OF_CODE = {
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "resource_exhausted",
}


@dataclass(frozen=True)
class ClientTls:
    ca_file: str  # the CA that signed the service's certificate
    cert_file: str | None = None  # with key_file: a client certificate (mutual TLS)
    key_file: str | None = None
    server_name: str | None = None  # overrides the name checked against the certificate


@dataclass
class RemoteCompactorStats:
    remote_ok: int = 0
    remote_failed: int = 0
    fallbacks: int = 0  # compactions that ran locally after a remote failure or while backing off
    request_bytes: int = 0  # serialized Compact requests sent
    response_bytes: int = 0
    remote_input_bytes: int = 0  # table bytes the services read and wrote for us
    remote_output_bytes: int = 0
    remote_cpu_seconds: float = 0.0  # CPU the services spent on our compactions
    local_cpu_seconds: float = 0.0  # CPU the local fallback spent
    failures_by_code: dict[str, int] = field(default_factory=dict)
    # The fallbacks by reason: every one of FALLBACK_REASONS, from 0 (the keys never change).
    fallbacks_by_reason: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(FALLBACK_REASONS, 0)
    )


class _Endpoint:
    """One service instance: its channel, breaker and the work in flight there."""

    def __init__(
        self,
        address: str,
        breaker: CircuitBreaker,
        credentials: grpc.ChannelCredentials | None,
        options: list[tuple[str, Any]],
    ) -> None:
        self.address = address
        self.breaker = breaker
        if credentials is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            self.channel = grpc.secure_channel(address, credentials, options=options)
        self.stub = pb_grpc.CompactionServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.listed = True  # in the resolver's latest list: may get new work
        self.outstanding_bytes = 0  # input bytes of the calls in flight
        self.calls = 0  # calls in flight
        self.last_start = -1  # when it last got a call (a sequence number; -1: never)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def _channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )


class RemoteCompactor:
    """Implements `statebackend.lsm.compactor.Compactor`; see the module docstring.

    `endpoints`: a resolver (the compactor takes over one of its users: `close` releases it), or
    `host:port`s (a static list).
    """

    def __init__(
        self,
        endpoints: EndpointResolver | Sequence[str],
        *,
        deadline_s: float = 300.0,
        token: str | None = None,
        tls: ClientTls | None = None,
        failure_threshold: int = 3,
        backoff_s: float = 10.0,
        max_backoff_s: float = 120.0,
        probe_timeout_s: float = 2.0,
        allow_subcompactions: bool = True,
        local: Compactor | None = None,
        local_workers: int = 1,
        max_message_bytes: int = 16 << 20,
    ) -> None:
        if not isinstance(endpoints, EndpointResolver):
            names = [endpoints] if isinstance(endpoints, str) else list(endpoints)
            endpoints = EndpointResolver(",".join(names))
        self.resolver = endpoints
        self.deadline_s = deadline_s
        self.probe_timeout_s = probe_timeout_s
        self.allow_subcompactions = allow_subcompactions
        self._breaker_settings = (failure_threshold, backoff_s, max_backoff_s)
        CircuitBreaker(*self._breaker_settings)  # a bad setting is an error now, not later
        self._channel_options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls is not None and tls.server_name:
            self._channel_options.append(("grpc.ssl_target_name_override", tls.server_name))
        self._credentials = None if tls is None else _channel_credentials(tls)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._own_local = local is None
        self._local: Compactor = local or LocalCompactor(local_workers)
        # For DBs in this process (memory://), which a worker process cannot read.
        self._in_process = LocalCompactor(local_workers, processes=False)
        self._lock = threading.Lock()  # guards the endpoints and the stats
        self._known: dict[str, _Endpoint] = {}  # listed, or unlisted with calls in flight
        self._listed: tuple[str, ...] | None = None  # the resolver's list last taken in
        self._starts = itertools.count()
        self.stats = RemoteCompactorStats()

    # -- Compactor ---------------------------------------------------------------------------

    def submit(
        self, spec: CompactionSpec, storage_options: Mapping[str, Any]
    ) -> "Future[CompactionResult]":
        outer: Future[CompactionResult] = Future()
        options = dict(storage_options)
        if (split_protocol(spec.db_root)[0] or "file") in IN_PROCESS_PROTOCOLS:
            self._run_local(spec, options, outer, local=self._in_process)
        else:
            self._try_remote(spec, options, outer, tried=(), last_failure=None)
        return outer

    def close(self) -> None:
        self.resolver.release()
        with self._lock:
            endpoints, self._known = list(self._known.values()), {}
        for endpoint in endpoints:
            endpoint.channel.close()
        if self._own_local:
            self._local.close()
        self._in_process.close()

    def breaker(self, address: str) -> CircuitBreaker | None:
        """The circuit breaker of endpoint `address` (None: not known now)."""
        with self._lock:
            endpoint = self._known.get(address)
        return None if endpoint is None else endpoint.breaker

    # -- endpoints -----------------------------------------------------------------------------

    def _listed_endpoints(self) -> list[_Endpoint]:
        """The endpoints of the resolver's latest list; unlisted ones whose calls are over are
        dropped and their channels closed."""
        addresses = self.resolver.endpoints()
        idle: list[_Endpoint] = []
        with self._lock:
            if addresses != self._listed:
                self._listed = addresses
                for endpoint in self._known.values():
                    endpoint.listed = endpoint.address in addresses
                for address in addresses:
                    if address not in self._known:
                        self._known[address] = _Endpoint(
                            address,
                            CircuitBreaker(*self._breaker_settings),
                            self._credentials,
                            self._channel_options,
                        )
            for endpoint in list(self._known.values()):
                if not endpoint.listed and endpoint.calls == 0:
                    idle.append(self._known.pop(endpoint.address))
            listed = [self._known[address] for address in addresses]
        for endpoint in idle:
            endpoint.channel.close()
        return listed

    def _pick(self, nbytes: int, tried: Sequence[_Endpoint]) -> tuple[_Endpoint | None, bool]:
        """The listed endpoint with the least outstanding work whose breaker is closed and that
        was not tried, with `nbytes` of work counted on it; and whether any endpoint is listed."""
        listed = self._listed_endpoints()
        for endpoint in listed:
            if endpoint.breaker.begin_probe():
                self._probe(endpoint)
        with self._lock:
            candidates = [
                e for e in listed if e.listed and e not in tried and e.breaker.allows_remote()
            ]
            if not candidates:
                return None, bool(listed)
            best = min(candidates, key=lambda e: (e.outstanding_bytes, e.calls, e.last_start))
            best.outstanding_bytes += nbytes
            best.calls += 1
            best.last_start = next(self._starts)
        return best, True

    def _probe(self, endpoint: _Endpoint) -> None:
        """Ask the endpoint's health service; SERVING closes its breaker."""
        call = endpoint.health.Check.future(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME),
            timeout=self.probe_timeout_s,
            metadata=self._metadata,
        )

        def done(call: Any) -> None:
            try:
                healthy = call.result().status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                healthy = False
            log.info("compaction service %s health probe: healthy=%s", endpoint.address, healthy)
            endpoint.breaker.probe_result(healthy)

        call.add_done_callback(done)

    # -- remote ------------------------------------------------------------------------------

    def _try_remote(
        self,
        spec: CompactionSpec,
        options: dict[str, Any],
        outer: "Future[CompactionResult]",
        tried: tuple[_Endpoint, ...],
        last_failure: str | None,
    ) -> None:
        nbytes = input_bytes(spec)
        endpoint, any_listed = self._pick(nbytes, tried)
        if endpoint is None:
            if not any_listed:
                self.resolver.refresh_soon()
            reason = last_failure or ("breaker_open" if any_listed else "no_endpoint")
            self._run_local(spec, options, outer, reason)
            return
        request = pb.CompactRequest(
            spec=spec_to_proto(spec), allow_subcompactions=self.allow_subcompactions
        )
        log.info(
            "invokeCompactionService compaction_id=%s endpoint=%s db_root=%s inputs=%d "
            "input_bytes=%d output_level=%d",
            spec.compaction_id,
            endpoint.address,
            spec.db_root,
            sum(len(i.tables) for i in spec.inputs),
            nbytes,
            spec.output_level,
        )
        with self._lock:
            self.stats.request_bytes += request.ByteSize()
        call = endpoint.stub.Compact.future(
            request, timeout=self.deadline_s, metadata=self._metadata
        )
        outer.add_done_callback(lambda f: call.cancel() if f.cancelled() else None)
        call.add_done_callback(
            lambda c: self._on_remote_done(c, endpoint, nbytes, spec, options, outer, tried)
        )

    def _on_remote_done(
        self,
        call: Any,
        endpoint: _Endpoint,
        nbytes: int,
        spec: CompactionSpec,
        options: dict[str, Any],
        outer: "Future[CompactionResult]",
        tried: tuple[_Endpoint, ...],
    ) -> None:
        with self._lock:
            endpoint.outstanding_bytes -= nbytes
            endpoint.calls -= 1
        if call.cancelled():
            return  # the caller cancelled `outer`: nothing to deliver
        try:
            response = call.result()
            result = dataclasses.replace(result_from_proto(response.result), remote=True)
            validate_result(spec, result)
        except grpc.RpcError as e:
            code = e.code()
            self._failed(endpoint, spec, code.name, e.details())
            reason = _REASON_OF_CODE.get(code, "other")
            if code in _RETRY_ELSEWHERE and not outer.cancelled():
                self._try_remote(spec, options, outer, (*tried, endpoint), reason)
            else:
                self._run_local(spec, options, outer, reason)
            return
        except ValueError as e:
            self._failed(endpoint, spec, "BAD_RESULT", str(e))
            self._discard(spec, options)
            self._run_local(spec, options, outer, "invalid_result")
            return
        endpoint.breaker.record_success()
        with self._lock:
            s = self.stats
            s.remote_ok += 1
            s.response_bytes += response.ByteSize()
            s.remote_input_bytes += result.stats.input_bytes
            s.remote_output_bytes += result.stats.output_bytes
            s.remote_cpu_seconds += result.stats.cpu_seconds
        self._deliver(spec, result, options, outer)

    def _failed(self, endpoint: _Endpoint, spec: CompactionSpec, code: str, details: Any) -> None:
        endpoint.breaker.record_failure()
        self.resolver.refresh_soon()  # the endpoint may have left
        with self._lock:
            self.stats.remote_failed += 1
            self.stats.failures_by_code[code] = self.stats.failures_by_code.get(code, 0) + 1
        log.warning(
            "compaction service %s failed compaction %s: %s %s (breaker %s)",
            endpoint.address,
            spec.compaction_id,
            code,
            details,
            endpoint.breaker.state.value,
        )

    def _discard(self, spec: CompactionSpec, options: dict[str, Any]) -> None:
        """Delete the outputs of a run whose result will not be delivered: every file under the
        spec's prefix (when this is called, no run whose result may be delivered is writing)."""
        fs, root = filesystem(spec.db_root, options)
        delete_outputs(fs, root, spec.output_prefix)

    # -- local -------------------------------------------------------------------------------

    def _run_local(
        self,
        spec: CompactionSpec,
        options: dict[str, Any],
        outer: "Future[CompactionResult]",
        reason: str = "",
        local: Compactor | None = None,
    ) -> None:
        """Run `spec` on `local`; by default on the fallback compactor, counted as a fallback
        for `reason` (one of FALLBACK_REASONS)."""
        if outer.cancelled():
            return
        if local is None:
            local = self._local
            with self._lock:
                self.stats.fallbacks += 1
                self.stats.fallbacks_by_reason[reason] += 1
            log.info("compaction %s runs locally: %s", spec.compaction_id, reason)
        future = local.submit(spec, options)

        def done(f: "Future[CompactionResult]") -> None:
            try:
                result = f.result()
            except BaseException as e:  # noqa: BLE001 - delivered to the caller
                try:
                    outer.set_exception(e)
                except InvalidStateError:
                    pass  # cancelled meanwhile; run_compaction already removed its outputs
                return
            with self._lock:
                self.stats.local_cpu_seconds += result.stats.cpu_seconds
            self._deliver(spec, result, options, outer)

        future.add_done_callback(done)

    def _deliver(
        self,
        spec: CompactionSpec,
        result: CompactionResult,
        options: dict[str, Any],
        outer: "Future[CompactionResult]",
    ) -> None:
        """Complete `outer`, or delete the result's outputs if the caller gave up meanwhile."""
        try:
            outer.set_result(result)
        except InvalidStateError:
            log.info(
                "compaction %s finished after it was cancelled; deleting its outputs",
                spec.compaction_id,
            )
            self._discard(spec, options)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return {"true": True, "false": False}[value.strip().lower()]
    return bool(value)


# The backend options the `remote` mode reads (the runtime sets them from the configuration keys
# `compaction.service.*` and `compaction.client.*`, typed: docs/configuration.md), each with the
# RemoteCompactor argument it sets and its conversion (for backends configured by hand). Also read:
# `compaction_service_address`, `compaction_service_resolve_interval_s`, the TLS files
# (`TLS_OPTIONS`) and `compaction_job_lookup`, which is no configuration key: the runtime puts
# there the function that answers `job:<name>` addresses.
OPTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "compaction_service_token": ("token", str),
    "compaction_service_deadline_s": ("deadline_s", float),
    "compaction_service_breaker_failures": ("failure_threshold", int),
    "compaction_service_breaker_backoff_s": ("backoff_s", float),
    "compaction_service_breaker_max_backoff_s": ("max_backoff_s", float),
    "compaction_service_subcompactions": ("allow_subcompactions", _flag),
}
TLS_OPTIONS = {
    "compaction_service_tls_ca_file": "ca_file",
    "compaction_service_tls_cert_file": "cert_file",
    "compaction_service_tls_key_file": "key_file",
    "compaction_service_tls_server_name": "server_name",
}


def remote_compactor(options: Mapping[str, Any], in_process: bool) -> RemoteCompactor:
    """The `remote` compaction mode: a RemoteCompactor built from backend options (the names
    above), on this process's resolver of the address."""
    address = str(options.get("compaction_service_address") or "")
    if not any(part.strip() for part in address.split(",")):
        raise ValueError(
            "compaction.mode is remote, but compaction.service.address names no host:port"
        )
    tls = {arg: str(options[name]) for name, arg in TLS_OPTIONS.items() if options.get(name)}
    if tls and "ca_file" not in tls:
        raise ValueError("the compaction client's TLS settings need compaction.client.tls.ca-file")
    arguments = {}
    for name, (argument, convert) in OPTIONS.items():
        if name in options:
            try:
                arguments[argument] = convert(options[name])
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(
                    f"compaction client option {name}: cannot use {options[name]!r}"
                ) from e
    interval = options.get("compaction_service_resolve_interval_s", DEFAULT_INTERVAL_S)
    resolver = shared_resolver(
        address, job_lookup=options.get("compaction_job_lookup"), interval_s=float(interval)
    )
    try:
        compactor = RemoteCompactor(resolver, tls=ClientTls(**tls) if tls else None, **arguments)
    except BaseException:
        resolver.release()
        raise
    CLIENT_METRICS.track(compactor, resolver.address)  # its fallbacks on this process's /metrics
    return compactor

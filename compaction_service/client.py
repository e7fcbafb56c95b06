"""`RemoteCompactor`: the LSM's `Compactor` that offloads compactions to compaction services.

Per spec: pick an endpoint whose circuit breaker is closed (round robin), log
`invokeCompactionService ...`, and call Compact with a deadline. The returned future gets the
remote result, or, on any failure (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, any other
status, a result that `files.validate_result` refuses), the result of running the same spec locally:
nothing is lost. Failures that cost no time (UNAVAILABLE, RESOURCE_EXHAUSTED) first try the
other endpoints. A spec whose DB lives in this process (memory://) always runs locally.
A result the service computed is marked `remote` (the DB counts where compactions ran by that
mark, also when a compaction has no outputs); a local run's result is not.

Invariants:
- The future is completed exactly once, with exactly one result. Before a rejected remote result
  is replaced by a local run, and when a result arrives after the caller cancelled, every file
  under the spec's output prefix is deleted (`files.delete_outputs`); anything a lost call left
  behind is removed by the service (on deadline or cancel) or, failing that, by the DB's garbage
  collector (docs/lsm-protocol.md).
- Cancelling the future (the DB abandons a compaction) cancels the remote call, which makes the
  service stop the work and delete its partial outputs.
"""

import dataclasses
import itertools
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import grpc
from fsspec.core import split_protocol
from grpc_health.v1 import health_pb2, health_pb2_grpc

from compaction_service.breaker import CircuitBreaker
from compaction_service.convert import result_from_proto, spec_to_proto
from compaction_service.proto import compaction_pb2 as pb
from compaction_service.proto import compaction_pb2_grpc as pb_grpc
from compaction_service.subcompactions import input_bytes
from statebackend.dfs import filesystem
from statebackend.lsm.compaction_job import CompactionResult, CompactionSpec
from statebackend.lsm.compactor import (
    IN_PROCESS_PROTOCOLS,
    Compactor,
    LocalCompactor,
    register_compaction_mode,
)
from statebackend.lsm.files import delete_outputs, validate_result

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CompactionService"].full_name
# Failures after which another endpoint is tried before running locally (they cost no time).
_RETRY_ELSEWHERE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


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


class _Endpoint:
    def __init__(
        self, address: str, breaker: CircuitBreaker, tls: ClientTls | None, max_bytes: int
    ) -> None:
        self.address = address
        self.breaker = breaker
        options = [
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
        ]
        if tls is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self.channel = grpc.secure_channel(address, _channel_credentials(tls), options=options)
        self.stub = pb_grpc.CompactionServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)


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
    """Implements `statebackend.lsm.compactor.Compactor`; see the module docstring."""

    def __init__(
        self,
        endpoints: Sequence[str],
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
        if not endpoints:
            raise ValueError("at least one endpoint is required")
        self.deadline_s = deadline_s
        self.probe_timeout_s = probe_timeout_s
        self.allow_subcompactions = allow_subcompactions
        self.endpoints = [
            _Endpoint(
                address,
                CircuitBreaker(failure_threshold, backoff_s, max_backoff_s),
                tls,
                max_message_bytes,
            )
            for address in endpoints
        ]
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._own_local = local is None
        self._local: Compactor = local or LocalCompactor(local_workers)
        # For DBs in this process (memory://), which a worker process cannot read.
        self._in_process = LocalCompactor(local_workers, processes=False)
        self._turn = itertools.count()
        self._lock = threading.Lock()
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
            self._try_remote(spec, options, outer, tried=())
        return outer

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.channel.close()
        if self._own_local:
            self._local.close()
        self._in_process.close()

    # -- remote ------------------------------------------------------------------------------

    def _pick(self, tried: Sequence[_Endpoint]) -> _Endpoint | None:
        """The next endpoint (round robin) whose breaker is closed and that was not tried."""
        for endpoint in self.endpoints:
            if endpoint.breaker.begin_probe():
                self._probe(endpoint)
        start = next(self._turn)
        n = len(self.endpoints)
        for i in range(n):
            endpoint = self.endpoints[(start + i) % n]
            if endpoint not in tried and endpoint.breaker.allows_remote():
                return endpoint
        return None

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

    def _try_remote(
        self,
        spec: CompactionSpec,
        options: dict[str, Any],
        outer: "Future[CompactionResult]",
        tried: tuple[_Endpoint, ...],
    ) -> None:
        endpoint = self._pick(tried)
        if endpoint is None:
            why = "every endpoint failed" if tried else "every endpoint is backing off"
            self._run_local(spec, options, outer, why)
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
            input_bytes(spec),
            spec.output_level,
        )
        with self._lock:
            self.stats.request_bytes += request.ByteSize()
        call = endpoint.stub.Compact.future(
            request, timeout=self.deadline_s, metadata=self._metadata
        )
        outer.add_done_callback(lambda f: call.cancel() if f.cancelled() else None)
        call.add_done_callback(
            lambda c: self._on_remote_done(c, endpoint, spec, options, outer, tried)
        )

    def _on_remote_done(
        self,
        call: Any,
        endpoint: _Endpoint,
        spec: CompactionSpec,
        options: dict[str, Any],
        outer: "Future[CompactionResult]",
        tried: tuple[_Endpoint, ...],
    ) -> None:
        if call.cancelled():
            return  # the caller cancelled `outer`: nothing to deliver
        try:
            response = call.result()
            result = dataclasses.replace(result_from_proto(response.result), remote=True)
            validate_result(spec, result)
        except grpc.RpcError as e:
            code = e.code()
            self._failed(endpoint, spec, code.name, e.details())
            if code in _RETRY_ELSEWHERE and not outer.cancelled():
                self._try_remote(spec, options, outer, (*tried, endpoint))
            else:
                self._run_local(spec, options, outer, f"remote failed with {code.name}")
            return
        except ValueError as e:
            self._failed(endpoint, spec, "BAD_RESULT", str(e))
            self._discard(spec, options)
            self._run_local(spec, options, outer, "the remote result was invalid")
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
        why: str = "",
        local: Compactor | None = None,
    ) -> None:
        """Run `spec` on `local`; by default on the fallback compactor, counted as a fallback
        because of `why`."""
        if outer.cancelled():
            return
        if local is None:
            local = self._local
            with self._lock:
                self.stats.fallbacks += 1
            log.info("compaction %s runs locally: %s", spec.compaction_id, why)
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


def remote_compactor(options: Mapping[str, Any], in_process: bool) -> RemoteCompactor:
    """The `remote` compaction mode: a RemoteCompactor built from backend options.

    `compaction_service_address` is a comma-separated list of host:port; optional:
    `compaction_service_token` and `compaction_service_deadline_s`.
    """
    address = str(options.get("compaction_service_address") or "")
    endpoints = [part.strip() for part in address.split(",") if part.strip()]
    if not endpoints:
        raise ValueError(
            "compaction.mode is remote, but compaction.service.address names no host:port"
        )
    return RemoteCompactor(
        endpoints,
        token=options.get("compaction_service_token") or None,
        deadline_s=float(options.get("compaction_service_deadline_s") or 300.0),
    )


register_compaction_mode("remote", remote_compactor)

"""The job manager's HTTP API (aiohttp, JSON), described by `openapi.DOCUMENT`.

Handlers translate between JSON and `JobManager` calls: bad input is a 400 with
`{"error": "..."}` (also a body nested more than `MAX_JSON_DEPTH` levels, which no call needs),
an unknown job or task manager a 404, a savepoint or stop of a job that is not running a 409,
a savepoint that failed a 500 that says why; the token check is the `auth` middleware in front of
every route except the dashboard's static files (`/dashboard/`), which call the API with the
token the user gives them. A task manager's registration and heartbeats carry its labels and
whether it drains; a drained one deregisters (`DELETE /api/v1/taskmanagers/{id}`).
"""

import base64
import binascii
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from statebackend.backend import SAVEPOINT_FORMATS
from streamlet.cluster import openapi
from streamlet.cluster.auth import token_middleware
from streamlet.cluster.jobmanager import JobManager, JobNotRunning, SubmissionError, UnknownJob
from streamlet.cluster.metrics import JobManagerMetrics
from streamlet.cluster.model import Artifact, JobRecord, TaskManagerInfo
from streamlet.cluster.savepoint_requests import SavepointFailed
from streamlet.errors import JobLoadError

MANAGER: web.AppKey[JobManager] = web.AppKey("manager", JobManager)
METRICS: web.AppKey[JobManagerMetrics] = web.AppKey("metrics", JobManagerMetrics)
MAX_SUBMISSION_BYTES = 64 << 20
MAX_JSON_DEPTH = 32
DASHBOARD = Path(__file__).parent / "dashboard"


def _error(status: type[web.HTTPException], message: str) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json")


async def _json_body(request: web.Request) -> dict[str, Any]:
    too_deep = f"the request body is nested more than {MAX_JSON_DEPTH} levels deep"
    try:
        body = await request.json()
    except RecursionError:
        raise _error(web.HTTPBadRequest, too_deep) from None
    except ValueError:
        raise _error(web.HTTPBadRequest, "the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _error(web.HTTPBadRequest, "the request body must be a JSON object")
    if _deeper_than(body, MAX_JSON_DEPTH):
        raise _error(web.HTTPBadRequest, too_deep)
    return body


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON `value` nests objects and arrays more than `limit` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
    return False


def _manager(request: web.Request) -> JobManager:
    return request.app[MANAGER]


def _job_or_404(request: web.Request) -> JobRecord:
    try:
        return _manager(request).job(request.match_info["job_id"])
    except UnknownJob:
        raise _error(web.HTTPNotFound, f"no job {request.match_info['job_id']}") from None


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.DOCUMENT)


async def list_jobs(request: web.Request) -> web.Response:
    jobs = sorted(_manager(request).jobs.values(), key=lambda job: job.submitted_ms)
    return web.json_response({"jobs": [job.summary() for job in jobs]})


async def submit_job(request: web.Request) -> web.Response:
    body = await _json_body(request)
    spec = body.get("artifact")
    if not isinstance(spec, dict):
        raise _error(web.HTTPBadRequest, "artifact must be an object (kind, module/file_name)")
    try:
        artifact = Artifact(
            kind=str(spec.get("kind")),
            module=spec.get("module"),
            file_name=spec.get("file_name"),
            entry=spec.get("entry"),
            args=spec.get("args") or [],
        )
        data = base64.b64decode(body["data_b64"], validate=True) if body.get("data_b64") else None
    except (binascii.Error, TypeError) as e:
        raise _error(web.HTTPBadRequest, f"data_b64 is not base64: {e}") from None
    parallelism = body.get("parallelism")
    if parallelism is not None and (not isinstance(parallelism, int) or parallelism < 1):
        raise _error(web.HTTPBadRequest, "parallelism must be a positive integer")
    config = body.get("config") or {}
    if not isinstance(config, dict):
        raise _error(web.HTTPBadRequest, "config must be an object of configuration keys")
    restore_from = _optional_string(body, "restore_from")
    try:
        record = await _manager(request).submit(artifact, data, parallelism, config, restore_from)
    except (SubmissionError, JobLoadError) as e:
        raise _error(web.HTTPBadRequest, str(e)) from None
    return web.json_response(record.summary(), status=201)


async def job_status(request: web.Request) -> web.Response:
    job = _job_or_404(request)
    return web.json_response(
        {
            **job.summary(),
            "error": job.error,
            "metrics": job.metrics,
            "attempt": job.attempt,
            "submitted_ms": job.submitted_ms,
            "config": job.config,
            "instances": [asdict(instance) for instance in job.instances.values()],
        }
    )


async def cancel_job(request: web.Request) -> web.Response:
    job = _job_or_404(request)
    await _manager(request).cancel(job.id)
    return web.json_response(job.summary(), status=202)


async def job_checkpoints(request: web.Request) -> web.Response:
    job = _job_or_404(request)
    return web.json_response(await _manager(request).checkpoints(job.id))


def _optional_string(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise _error(web.HTTPBadRequest, f"{key} must be a non-empty string (a URL)")
    return value


def _savepoint_format(body: dict[str, Any]) -> str:
    format = body.get("format", "native")
    if format not in SAVEPOINT_FORMATS:
        raise _error(
            web.HTTPBadRequest,
            f"format must be {' or '.join(SAVEPOINT_FORMATS)}, not {format!r}",
        )
    return format


async def _savepoint(request: web.Request, url_key: str, stop: bool) -> dict[str, Any]:
    body = await _json_body(request) if request.can_read_body else {}
    url, format = _optional_string(body, url_key), _savepoint_format(body)
    job = _job_or_404(request)
    try:
        return await _manager(request).savepoint(job.id, url, format, stop)
    except JobNotRunning as e:
        raise _error(web.HTTPConflict, str(e)) from None
    except SavepointFailed as e:
        raise _error(web.HTTPInternalServerError, f"the savepoint failed: {e}") from None


async def take_savepoint(request: web.Request) -> web.Response:
    record = await _savepoint(request, "url", stop=False)
    return web.json_response({"job_id": request.match_info["job_id"], **record}, status=201)


async def stop_job(request: web.Request) -> web.Response:
    record = await _savepoint(request, "savepoint_url", stop=True)
    return web.json_response({"job_id": request.match_info["job_id"], **record})


async def job_savepoints(request: web.Request) -> web.Response:
    job = _job_or_404(request)
    return web.json_response({"job_id": job.id, "savepoints": job.savepoints})


async def job_endpoints(request: web.Request) -> web.Response:
    job = _job_or_404(request)
    return web.json_response({"job_id": job.id, "name": job.name, "endpoints": job.endpoints})


async def job_file(request: web.Request) -> web.Response:
    try:
        data = await _manager(request).file(
            request.match_info["job_id"], request.match_info["name"]
        )
    except (UnknownJob, FileNotFoundError):
        raise _error(web.HTTPNotFound, "no such job file") from None
    return web.Response(body=data, content_type="application/octet-stream")


async def endpoints_by_name(request: web.Request) -> web.Response:
    name = request.match_info["job_name"]
    return web.json_response({"name": name, "endpoints": _manager(request).endpoints_of(name)})


async def list_task_managers(request: web.Request) -> web.Response:
    manager = _manager(request)
    used = manager.used_slots()
    return web.json_response(
        {"task_managers": [tm.to_json(used.get(tm.id, 0)) for tm in manager.task_managers.values()]}
    )


def _reports(body: dict[str, Any]) -> list[dict]:
    reports = body.get("deployments", [])
    if not isinstance(reports, list) or not all(
        isinstance(r, dict) and {"deployment_id", "job_id", "status"} <= r.keys() for r in reports
    ):
        raise _error(web.HTTPBadRequest, "deployments must be a list of reports")
    return reports


def _draining(body: dict[str, Any]) -> bool:
    draining = body.get("draining", False)
    if not isinstance(draining, bool):
        raise _error(web.HTTPBadRequest, "draining must be true or false")
    return draining


def _labels(body: dict[str, Any]) -> list[str]:
    labels = body.get("labels", [])
    if not isinstance(labels, list) or not all(
        isinstance(label, str) and label and "," not in label for label in labels
    ):
        raise _error(web.HTTPBadRequest, "labels must be a list of non-empty strings without ','")
    return labels


async def register_task_manager(request: web.Request) -> web.Response:
    body = await _json_body(request)
    try:
        tm = TaskManagerInfo(
            id=str(body["id"]),
            host=str(body["host"]),
            slots=int(body["slots"]),
            metrics_url=body.get("metrics_url"),
            exchange_address=str(body["exchange_address"]),
            labels=_labels(body),
            draining=_draining(body),
        )
    except (KeyError, ValueError, TypeError):
        raise _error(
            web.HTTPBadRequest, "registration needs id, host, slots and exchange_address"
        ) from None
    return web.json_response(await _manager(request).register(tm, _reports(body)))


async def heartbeat(request: web.Request) -> web.Response:
    body = await _json_body(request)
    answer = await _manager(request).heartbeat(
        request.match_info["tm_id"], _reports(body), _draining(body)
    )
    if answer is None:
        raise _error(web.HTTPNotFound, "unknown task manager: register again")
    return web.json_response(answer)


async def deregister_task_manager(request: web.Request) -> web.Response:
    if not await _manager(request).deregister(request.match_info["tm_id"]):
        raise _error(web.HTTPNotFound, f"no task manager {request.match_info['tm_id']}")
    return web.json_response({"id": request.match_info["tm_id"]})


async def dashboard(request: web.Request) -> web.FileResponse:
    return web.FileResponse(DASHBOARD / "index.html")


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/dashboard/")


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def create_app(manager: JobManager, token: str) -> web.Application:
    app = web.Application(
        middlewares=[token_middleware(token)], client_max_size=MAX_SUBMISSION_BYTES
    )
    app[MANAGER] = manager
    app[METRICS] = JobManagerMetrics(manager)
    api = "/api/v1"
    app.router.add_get(f"{api}/openapi.json", openapi_document)
    app.router.add_get(f"{api}/jobs", list_jobs)
    app.router.add_post(f"{api}/jobs", submit_job)
    app.router.add_get(f"{api}/jobs/{{job_id}}", job_status)
    app.router.add_post(f"{api}/jobs/{{job_id}}/cancel", cancel_job)
    app.router.add_post(f"{api}/jobs/{{job_id}}/stop", stop_job)
    app.router.add_get(f"{api}/jobs/{{job_id}}/checkpoints", job_checkpoints)
    app.router.add_get(f"{api}/jobs/{{job_id}}/savepoints", job_savepoints)
    app.router.add_post(f"{api}/jobs/{{job_id}}/savepoints", take_savepoint)
    app.router.add_get(f"{api}/jobs/{{job_id}}/endpoints", job_endpoints)
    app.router.add_get(f"{api}/jobs/{{job_id}}/files/{{name}}", job_file)
    app.router.add_get(f"{api}/endpoints/{{job_name}}", endpoints_by_name)
    app.router.add_get(f"{api}/taskmanagers", list_task_managers)
    app.router.add_post(f"{api}/taskmanagers", register_task_manager)
    app.router.add_post(f"{api}/taskmanagers/{{tm_id}}/heartbeat", heartbeat)
    app.router.add_delete(f"{api}/taskmanagers/{{tm_id}}", deregister_task_manager)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", root)
    app.router.add_get("/dashboard/", dashboard)
    app.router.add_static("/dashboard", DASHBOARD)
    return app

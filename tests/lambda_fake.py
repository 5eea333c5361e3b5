"""A fake of the Lambda Cloud API (v1.8.3) for tests. It validates every request it receives and
every response it sends against the official OpenAPI spec, keeps capacity per (type, region),
moves instances booting → active, enforces the rate limits (time-scalable), and injects faults.
A response that breaks the spec is never sent: it becomes a 500 and is recorded."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.harness import free_port

# Lambda Cloud's public OpenAPI spec, v1.8.3, kept in the repository so a plain clone runs the tests.
SPEC_PATH = Path(__file__).resolve().parent / "data" / "lambda-cloud-api-openapi-1.8.3.json"
SPEC_URI = "urn:lambda-cloud-openapi"
# Undocumented statuses (429, provider errors) still use the documented error envelope.
GENERIC_ERROR = {"type": "object", "additionalProperties": False, "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "suggestion": {"type": "string"}}}}}

ROUTES = [  # (method, path regex, spec path)
    ("GET", r"/api/v1/instance-types", "/api/v1/instance-types"),
    ("GET", r"/api/v1/instances", "/api/v1/instances"),
    ("GET", r"/api/v1/instances/(?P<id>[^/]+)", "/api/v1/instances/{id}"),
    ("POST", r"/api/v1/instance-operations/launch", "/api/v1/instance-operations/launch"),
    ("POST", r"/api/v1/instance-operations/terminate", "/api/v1/instance-operations/terminate"),
    ("GET", r"/api/v1/ssh-keys", "/api/v1/ssh-keys"),
    ("POST", r"/api/v1/ssh-keys", "/api/v1/ssh-keys"),
    ("DELETE", r"/api/v1/ssh-keys/(?P<id>[^/]+)", "/api/v1/ssh-keys/{id}"),
    ("GET", r"/api/v1/file-systems", "/api/v1/file-systems"),
    ("POST", r"/api/v1/filesystems", "/api/v1/filesystems"),
    ("DELETE", r"/api/v1/filesystems/(?P<id>[^/]+)", "/api/v1/filesystems/{id}"),
]
REGION_NAMES = {"us-east-1": "Virginia, USA", "us-west-1": "California, USA", "us-south-1": "Texas, USA",
                "europe-central-1": "Germany", "asia-northeast-1": "Tokyo, Japan"}
DEFAULT_TYPES = {
    "gpu_1x_a10": ("1x A10 (24 GB PCIe)", "A10 (24 GB PCIe)", 75, 30, 200, 1400, 1),
    "gpu_1x_a100": ("1x A100 (40 GB PCIe)", "A100 (40 GB PCIe)", 129, 30, 200, 512, 1),
    "gpu_8x_h100_sxm5": ("8x H100 (80 GB SXM5)", "H100 (80 GB SXM5)", 2392, 208, 1800, 24780, 8),
}


class SpecViolation(Exception):
    pass


class SpecValidator:
    def __init__(self) -> None:
        self.spec = json.loads(SPEC_PATH.read_text())
        self.registry = Registry().with_resource(SPEC_URI, Resource.from_contents(
            self.spec, default_specification=DRAFT202012))

    def _validator(self, pointer: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{SPEC_URI}#{pointer}"}, registry=self.registry)

    @staticmethod
    def _escape(path: str) -> str:
        return path.replace("~", "~0").replace("/", "~1")

    def check_request(self, spec_path: str, method: str, body: Any) -> None:
        operation = self.spec["paths"][spec_path][method.lower()]
        if "requestBody" not in operation:
            return
        pointer = f"/paths/{self._escape(spec_path)}/{method.lower()}/requestBody/content/application~1json/schema"
        errors = sorted(self._validator(pointer).iter_errors(body), key=str)
        if errors:
            raise SpecViolation(f"request to {method} {spec_path} breaks the spec: {errors[0].message}")

    def check_response(self, spec_path: str, method: str, status: int, body: Any) -> None:
        responses = self.spec["paths"][spec_path][method.lower()]["responses"]
        if str(status) in responses:
            pointer = (f"/paths/{self._escape(spec_path)}/{method.lower()}/responses/{status}"
                       "/content/application~1json/schema")
            validator = self._validator(pointer)
        else:
            validator = Draft202012Validator(GENERIC_ERROR)
        errors = sorted(validator.iter_errors(body), key=str)
        if errors:
            raise SpecViolation(f"response {status} to {method} {spec_path} breaks the spec: {errors[0].message}")


def error(code: str, message: str, suggestion: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if suggestion:
        body["suggestion"] = suggestion
    return {"error": body}


class FakeLambda:
    def __init__(self, *, api_keys: set[str], time_scale: float = 0.02, boot_seconds: float = 0.3,
                 on_active: Callable[[dict[str, Any]], str] | None = None,
                 on_gone: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.validator = SpecValidator()
        self.api_keys = api_keys
        self.time_scale = time_scale
        self.boot_seconds = boot_seconds
        self.on_active = on_active  # starts the VM host, returns its IP
        self.on_gone = on_gone
        self.types = {name: {"name": name, "description": d, "gpu_description": g, "price_cents_per_hour": p,
                             "specs": {"vcpus": c, "memory_gib": m, "storage_gib": s, "gpus": n}}
                      for name, (d, g, p, c, m, s, n) in DEFAULT_TYPES.items()}
        self.capacity: dict[tuple[str, str], int] = defaultdict(int)
        self.instances: dict[str, dict[str, Any]] = {}
        self.user_data: dict[str, str] = {}
        self.ssh_keys: list[dict[str, Any]] = []
        self.file_systems: dict[str, dict[str, Any]] = {}  # id -> Filesystem (without is_in_use)
        self.faults: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.requests: list[tuple[str, str, int]] = []
        self.vanish_capacity_after_listing = False
        self._calls: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.RLock()
        self._corrupt_next: str | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._stop = threading.Event()
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        threading.Thread(target=self._lifecycle, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    # --- test controls -----------------------------------------------------------------------
    def set_capacity(self, instance_type: str, region: str, count: int) -> None:
        with self._lock:
            self.capacity[(instance_type, region)] = count

    def inject(self, operation: str, code: str, *, times: int = 1) -> None:
        """The next `times` calls of `operation` (launch, instance-types, any) fail with `code`."""
        with self._lock:
            self.faults.append({"op": operation, "code": code, "times": times})

    def preempt(self, instance_id: str) -> None:
        self._set_status(instance_id, "preempted")

    def set_unhealthy(self, instance_id: str) -> None:
        self._set_status(instance_id, "unhealthy")

    def corrupt_next_response(self, operation: str) -> None:
        """Make the next response of `operation` break the spec (to show the fake refuses it)."""
        self._corrupt_next = operation

    def _set_status(self, instance_id: str, status: str) -> None:
        with self._lock:
            inst = self.instances[instance_id]
            inst["status"] = status
        if status in ("preempted", "terminated") and self.on_gone:
            self.on_gone(inst)

    # --- lifecycle ---------------------------------------------------------------------------
    def _lifecycle(self) -> None:
        while not self._stop.wait(0.05):
            with self._lock:
                booting = [i for i in self.instances.values()
                           if i["status"] == "booting" and time.monotonic() - i["_launched"] >= self.boot_seconds]
                terminating = [i for i in self.instances.values() if i["status"] == "terminating"]
            for inst in booting:
                ip = self.on_active(inst) if self.on_active else "192.0.2.10"
                with self._lock:
                    inst.update(ip=ip, private_ip=ip, status="active")
            for inst in terminating:
                self._set_status(inst["id"], "terminated")

    # --- HTTP --------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _dispatch(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body = fake.handle(self.command, self.path.split("?")[0], self.headers, raw)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _dispatch  # noqa: N815

        return Handler

    def _authorized(self, headers: Any) -> str | None:
        auth = headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            key = value.strip()
        elif scheme.lower() == "basic":
            try:
                key = base64.b64decode(value).decode().rstrip(":")
            except ValueError:
                key = value.rstrip(":")
        else:
            return None
        return key if key in self.api_keys else None

    def _rate_limited(self, key: str, operation: str) -> bool:
        now = time.monotonic()
        with self._lock:
            calls = self._calls[key]
            if calls and now - calls[-1] < 1.0 * self.time_scale * 0.5:  # 1 req/s, some slack for jitter
                return True
            calls.append(now)
            while len(calls) > 100:
                calls.popleft()
            if operation == "launch":
                launches = self._calls[key + ":launch"]
                while launches and launches[0] < now - 60 * self.time_scale:
                    launches.popleft()
                if (launches and now - launches[-1] < 12 * self.time_scale * 0.5) or len(launches) >= 5:
                    return True
                launches.append(now)
        return False

    def handle(self, method: str, path: str, headers: Any, raw: bytes) -> tuple[int, Any]:
        route = next(((m, re.fullmatch(p, path), sp) for m, p, sp in ROUTES
                      if m == method and re.fullmatch(p, path)), None)
        if route is None:
            return 404, error("global/object-does-not-exist", f"no such endpoint {method} {path}")
        _, match, spec_path = route
        status, body = self._handle(method, spec_path, match.groupdict(), headers, raw)
        with self._lock:
            self.requests.append((method, spec_path, status))
            if self._corrupt_next == spec_path and status == 200:
                self._corrupt_next = None
                body = {"data": {"unexpected": "shape"}}
        try:
            self.validator.check_response(spec_path, method, status, body)
        except SpecViolation as exc:
            self.violations.append(str(exc))
            return 500, error("global/internal-error", "the fake refused to send a response that breaks the spec")
        return status, body

    def _handle(self, method: str, spec_path: str, params: dict[str, str], headers: Any,
                raw: bytes) -> tuple[int, Any]:
        key = self._authorized(headers)
        if key is None:
            return 401, error("global/invalid-api-key", "API key was invalid, expired, or deleted.",
                              "Check your API key or create a new one, then try again.")
        body = None
        if raw:
            try:
                body = json.loads(raw)
                self.validator.check_request(spec_path, method, body)
            except (ValueError, SpecViolation) as exc:
                self.violations.append(str(exc))
                return 400, error("global/invalid-parameters", "Invalid request data.")
        operation = {"/api/v1/instance-operations/launch": "launch",
                     "/api/v1/instance-types": "instance-types"}.get(spec_path, "other")
        if self._rate_limited(key, operation):
            return 429, error("global/too-many-requests", "Too many requests.")
        fault = self._take_fault(operation)
        if fault:
            return fault
        handler = getattr(self, f"_{method.lower()}_{spec_path.strip('/').replace('/', '_').replace('-', '_')}"
                          .replace("{id}", "id"))
        return handler(params, body)

    def _take_fault(self, operation: str) -> tuple[int, Any] | None:
        with self._lock:
            for fault in self.faults:
                if fault["op"] in (operation, "any") and fault["times"] > 0:
                    fault["times"] -= 1
                    code = fault["code"]
                    break
            else:
                return None
        if code == "429":
            return 429, error("global/too-many-requests", "Too many requests.")
        if code == "insufficient-capacity":
            return 400, error("instance-operations/launch/insufficient-capacity",
                              "Not enough capacity to fulfill launch request.")
        if code == "quota-exceeded":
            return 400, error("global/quota-exceeded", "Quota exceeded.", "Contact Support to increase your quota.")
        return 503, error(code, "The upstream provider is unavailable.")  # provider/*

    # --- endpoints ---------------------------------------------------------------------------
    def _get_api_v1_instance_types(self, params: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            data = {name: {"instance_type": spec, "regions_with_capacity_available": [
                {"name": r, "description": REGION_NAMES.get(r, r)} for (t, r), n in sorted(self.capacity.items())
                if t == name and n > 0]} for name, spec in self.types.items()}
            if self.vanish_capacity_after_listing:
                self.vanish_capacity_after_listing = False
                for k in self.capacity:
                    self.capacity[k] = 0
        return 200, {"data": data}

    def _public(self, inst: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in inst.items() if not k.startswith("_") and v is not None}

    def _get_api_v1_instances(self, params: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            return 200, {"data": [self._public(i) for i in self.instances.values()]}

    def _get_api_v1_instances_id(self, params: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            inst = self.instances.get(params["id"])
            if inst is None:
                return 404, error("global/object-does-not-exist", "Specified instance does not exist.")
            return 200, {"data": self._public(inst)}

    def _post_api_v1_instance_operations_launch(self, params: dict[str, str], body: Any) -> tuple[int, Any]:
        name, region = body["instance_type_name"], body["region_name"]
        with self._lock:
            if name not in self.types:
                return 404, error("global/object-does-not-exist", f"Instance type {name} does not exist.")
            if not any(k["name"] in body["ssh_key_names"] for k in self.ssh_keys) or len(body["ssh_key_names"]) != 1:
                return 400, error("global/invalid-parameters", "Exactly one registered SSH key must be specified.")
            if self.capacity[(name, region)] <= 0:
                return 400, error("instance-operations/launch/insufficient-capacity",
                                  "Not enough capacity to fulfill launch request.")
            names = body.get("file_system_names") or []
            known = {fs["name"]: fs for fs in self.file_systems.values()}
            missing = [n for n in names if n not in known or known[n]["region"]["name"] != region]
            if missing:
                return 404, error("global/object-does-not-exist",
                                  f"Filesystem {missing[0]} does not exist in region {region}.")
            self.capacity[(name, region)] -= 1
            iid = uuid.uuid4().hex
            self.instances[iid] = {
                "id": iid, "name": body.get("name"), "status": "booting", "ssh_key_names": body["ssh_key_names"],
                "file_system_names": names, "region": {"name": region, "description": REGION_NAMES.get(region, region)},
                "instance_type": self.types[name], "hostname": f"{iid[:8]}.lambda.test",
                "actions": _actions(), "tags": body.get("tags", []), "_launched": time.monotonic(),
            }
            self.user_data[iid] = body.get("user_data", "")
        return 200, {"data": {"instance_ids": [iid]}}

    def _post_api_v1_instance_operations_terminate(self, params: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            missing = [i for i in body["instance_ids"] if i not in self.instances]
            if missing:
                return 404, error("global/object-does-not-exist", "Specified instance does not exist.")
            done = []
            for iid in body["instance_ids"]:
                inst = self.instances[iid]
                if inst["status"] not in ("terminated", "terminating"):
                    self.capacity[(inst["instance_type"]["name"], inst["region"]["name"])] += 1
                    inst["status"] = "terminating"
                done.append(self._public(inst))
        return 200, {"data": {"terminated_instances": done}}

    def _get_api_v1_ssh_keys(self, params: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            return 200, {"data": list(self.ssh_keys)}

    def _post_api_v1_ssh_keys(self, params: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            if any(k["name"] == body["name"] for k in self.ssh_keys):
                return 400, error("global/invalid-parameters", "An SSH key with this name already exists.")
            key = {"id": uuid.uuid4().hex, "name": body["name"], "public_key": body["public_key"]}
            self.ssh_keys.append(key)
            return 200, {"data": key}

    def _delete_api_v1_ssh_keys_id(self, params: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            self.ssh_keys = [k for k in self.ssh_keys if k["id"] != params["id"]]
        return 200, {"data": {}}


    def _file_system(self, fs: dict[str, Any]) -> dict[str, Any]:
        in_use = any(fs["name"] in i["file_system_names"] and i["status"] not in ("terminated", "terminating")
                     and i["region"]["name"] == fs["region"]["name"] for i in self.instances.values())
        return {**fs, "is_in_use": in_use}

    def _get_api_v1_file_systems(self, params: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            return 200, {"data": [self._file_system(fs) for fs in self.file_systems.values()]}

    def _post_api_v1_filesystems(self, params: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            if any(fs["name"] == body["name"] for fs in self.file_systems.values()):
                return 400, error("global/duplicate", "A filesystem with this name already exists.")
            fid = uuid.uuid4().hex
            self.file_systems[fid] = {
                "id": fid, "name": body["name"], "mount_point": f"/lambda/nfs/{body['name']}",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "created_by": {"id": "u1", "email": "team@example.com", "status": "active"},
                "region": {"name": body["region"], "description": REGION_NAMES.get(body["region"], body["region"])},
            }
            return 200, {"data": self._file_system(self.file_systems[fid])}

    def _delete_api_v1_filesystems_id(self, params: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            fs = self.file_systems.get(params["id"])
            if fs is None:
                return 404, error("global/object-does-not-exist", "Filesystem was not found.")
            if self._file_system(fs)["is_in_use"]:
                return 400, error("filesystems/filesystem-in-use", "Filesystem is in use by an instance.")
            del self.file_systems[params["id"]]
            return 200, {"data": {"deleted_ids": [params["id"]]}}


def _actions() -> dict[str, Any]:
    available = {"available": True}
    return {"migrate": available, "rebuild": available, "restart": available, "cold_reboot": available,
            "terminate": available}

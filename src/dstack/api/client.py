"""A typed HTTP client for the dstack server.

    from dstack.api import Client
    client = Client.from_config()
    run = client.runs.apply(".dstack.yml")
    for event in client.runs.follow_logs(run.name):
        print(event.message)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from dstack.api.config import load_config
from dstack.api.errors import error_for, no_answer, unreachable
from dstack.api.http import httpx
from dstack.core.errors import ConfigurationError, DstackError

if TYPE_CHECKING:
    from dstack.core.backends import BackendCheck
    from dstack.core.runs import Artifact, LogEvent, LogPage, Run, RunMetrics, RunPlan, RunSpec


def _models() -> Any:
    """dstack.core.runs, imported on first use: its models (with the configurations') cost ~0.1 s of
    every CLI call that never needs them (`dstack attach -c`)."""
    from dstack.core import runs

    return runs


class Client:
    def __init__(self, *, url: str, token: str, project: str, timeout: float = 60) -> None:
        self.url = url.rstrip("/")
        self.project = project
        # Loading CA certificates costs ~30 ms of every CLI call; a plain-http server needs none.
        # (Only relative paths are requested and redirects are not followed, so nothing goes to https.)
        transport = httpx.HTTPTransport(verify=False) if self.url.startswith("http://") else None
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {token}"})
        self.runs = RunsAPI(self)
        self.projects = ProjectsAPI(self)
        self.repos = ReposAPI(self)
        self.backends = BackendsAPI(self)
        self.secrets = SecretsAPI(self)
        self.fleets = FleetsAPI(self)
        self.volumes = VolumesAPI(self)

    @classmethod
    def from_config(cls, project: str | None = None) -> Client:
        entry = load_config().project(project)
        return cls(url=entry.url, token=entry.token, project=entry.name)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise unreachable(self.url) from None
        except httpx.TimeoutException:
            raise no_answer(self.url) from None
        if response.status_code >= 400 and method != "HEAD":
            raise _error(response)
        return response

    @contextlib.contextmanager
    def stream(self, method: str, path: str) -> Iterator[httpx.Response]:
        """A streamed response (errors raised as for `request`)."""
        try:
            with self._http.stream(method, path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response)
                yield response
        except httpx.ConnectError:
            raise DstackError(f"cannot reach the dstack server at {self.url}",
                              fix="Is `dstack server` running?") from None

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def project_path(self, path: str) -> str:
        return f"/api/projects/{self.project}{path}"

    def me(self) -> dict[str, Any]:
        return self.json("GET", "/api/users/me")

    def close(self) -> None:
        self._http.close()


def _error(response: httpx.Response) -> DstackError:
    return error_for(response.status_code, response.content)


class ProjectsAPI:
    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self) -> list[dict[str, Any]]:
        return self._c.json("GET", "/api/projects")

    def get(self, name: str | None = None) -> dict[str, Any]:
        return self._c.json("GET", f"/api/projects/{name or self._c.project}")


class BackendsAPI:
    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self) -> list[dict[str, Any]]:
        return self._c.projects.get()["backends"]

    def check(self, config: dict[str, Any]) -> BackendCheck:
        from dstack.core.backends import BackendCheck

        return BackendCheck.model_validate(self._c.json("POST", self._c.project_path("/backends/check"), json=config))

    def add(self, config: dict[str, Any]) -> dict[str, Any]:
        return self._c.json("POST", self._c.project_path("/backends"), json=config)

    def update(self, config: dict[str, Any]) -> dict[str, Any]:
        return self._c.json("PUT", self._c.project_path("/backends"), json=config)

    def delete(self, backend_type: str) -> None:
        self._c.request("DELETE", self._c.project_path(f"/backends/{backend_type}"))


class SecretsAPI:
    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self) -> list[str]:
        return self._c.json("GET", self._c.project_path("/secrets"))

    def set(self, name: str, value: str) -> None:
        self._c.request("PUT", self._c.project_path(f"/secrets/{name}"), json={"value": value})

    def delete(self, name: str) -> None:
        self._c.request("DELETE", self._c.project_path(f"/secrets/{name}"))


class ReposAPI:
    def __init__(self, client: Client) -> None:
        self._c = client

    def init(self, repo_id: str, info: dict[str, Any] | None = None) -> None:
        self._c.json("POST", self._c.project_path("/repos"), json={"repo_id": repo_id, "info": info or {}})

    def set_credentials(self, url: str, *, token: str | None = None, username: str | None = None,
                        private_key: str | None = None, known_hosts: list[str] | None = None) -> None:
        """Git credentials for cloning a private repo URL in runs (`repos:`)."""
        self._c.request("PUT", self._c.project_path("/repos/credentials"), json={
            "url": url, "token": token, "username": username, "private_key": private_key,
            "known_hosts": known_hosts or []})

    def upload_code(self, data: bytes, code_hash: str) -> None:
        path = self._c.project_path(f"/code/{code_hash}")
        if self._c.request("HEAD", path).status_code == 200:
            return  # content-addressed: already there
        self._c.request("PUT", path, content=data, headers={"Content-Type": "application/gzip"})


class _NamedResourcesAPI:
    """A project's named resources (fleets, volumes): apply, list, get, delete."""

    _path = ""

    def __init__(self, client: Client) -> None:
        self._c = client

    def _model(self) -> Any:
        raise NotImplementedError

    @staticmethod
    def _read(configuration_path: str | Path, kind: str) -> tuple[Path, str, Any]:
        """(path, text, configuration) of a `type: KIND` file."""
        from dstack.core.config_parser import parse_configuration

        path = Path(configuration_path)
        text = path.read_text()
        configuration = parse_configuration(text, str(path))
        if configuration.type != kind:
            raise ConfigurationError(f"{path}: `type: {configuration.type}` is not a {kind}", field="type")
        return path, text, configuration

    def apply(self, spec: Any) -> Any:
        return self._model().model_validate(self._c.json("POST", self._c.project_path(self._path),
                                                         json=spec.model_dump(mode="json")))

    def list(self, *, all: bool = False) -> list[Any]:
        model = self._model()
        return [model.model_validate(r) for r in self._c.json("GET", self._c.project_path(self._path),
                                                              params={"all": str(all).lower()})]

    def get(self, name: str) -> Any:
        return self._model().model_validate(self._c.json("GET", self._c.project_path(f"{self._path}/{name}")))

    def delete(self, name: str) -> Any:
        return self._model().model_validate(self._c.json("DELETE", self._c.project_path(f"{self._path}/{name}")))


class FleetsAPI(_NamedResourcesAPI):
    """Fleets: instances kept for runs to reuse (`type: fleet`)."""

    _path = "/fleets"

    def spec(self, configuration_path: str | Path) -> Any:
        from dstack.core.fleets import FleetSpec

        path, text, configuration = self._read(configuration_path, "fleet")
        if configuration.ssh_config is not None:
            configuration = configuration.model_copy(update={
                "ssh_config": _with_ssh_keys(configuration.ssh_config, path.parent)})
        return FleetSpec(configuration=configuration, configuration_path=str(path),
                         configuration_text=text if len(text) <= 65536 else None)

    def plan(self, spec: Any) -> Any:
        from dstack.core.fleets import FleetPlan

        return FleetPlan.model_validate(self._c.json("POST", self._c.project_path("/fleets/plan"),
                                                     json=spec.model_dump(mode="json")))

    def _model(self) -> Any:
        from dstack.core.fleets import Fleet

        return Fleet


class VolumesAPI(_NamedResourcesAPI):
    """Network volumes (`type: volume`)."""

    _path = "/volumes"

    def spec(self, configuration_path: str | Path) -> Any:
        from dstack.core.volumes import VolumeSpec

        path, text, configuration = self._read(configuration_path, "volume")
        return VolumeSpec(configuration=configuration, configuration_path=str(path),
                          configuration_text=text if len(text) <= 65536 else None)

    def _model(self) -> Any:
        from dstack.core.volumes import Volume

        return Volume


def _read_key(identity_file: str, base: Path, field: str) -> Any:
    from dstack.core.infra_configurations import SSHKey

    key_path = (base / Path(identity_file).expanduser()).resolve()
    try:
        private = key_path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"{field}: cannot read {key_path}: {exc.strerror}", field=field,
                                 fix="Point identity_file at the private key that logs in to the hosts") from None
    if "PRIVATE KEY" not in private:
        raise ConfigurationError(f"{field}: {key_path} is not a private key", field=field,
                                 fix="Point identity_file at the private key (not the .pub file)")
    public = key_path.with_name(key_path.name + ".pub")
    return SSHKey(private=private, public=public.read_text().strip() if public.exists() else None)


def _with_ssh_keys(ssh_config: Any, base: Path) -> Any:
    """An SSH fleet's `identity_file`s read here (the server never sees the user's files), sent as
    `ssh_key` content, as upstream does."""
    update: dict[str, Any] = {}
    if ssh_config.identity_file and ssh_config.ssh_key is None:
        update["ssh_key"] = _read_key(ssh_config.identity_file, base, "ssh_config.identity_file")
    if ssh_config.proxy_jump and ssh_config.proxy_jump.identity_file and ssh_config.proxy_jump.ssh_key is None:
        update["proxy_jump"] = ssh_config.proxy_jump.model_copy(update={"ssh_key": _read_key(
            ssh_config.proxy_jump.identity_file, base, "ssh_config.proxy_jump.identity_file")})
    hosts = []
    for i, host in enumerate(ssh_config.hosts):
        if host.identity_file and host.ssh_key is None:
            host = host.model_copy(update={"ssh_key": _read_key(host.identity_file, base,
                                                                f"ssh_config.hosts[{i}].identity_file")})
        if (host.ssh_key or update.get("ssh_key") or ssh_config.ssh_key) is None:
            raise ConfigurationError(f"ssh_config.hosts[{i}] ({host.hostname}): no key to log in with",
                                     field="ssh_config.identity_file",
                                     fix="Set ssh_config.identity_file (or the host's identity_file)")
        hosts.append(host)
    update["hosts"] = hosts
    return ssh_config.model_copy(update=update)


class RunsAPI:
    def __init__(self, client: Client) -> None:
        self._c = client

    def plan(self, run_spec: RunSpec) -> RunPlan:
        return _models().RunPlan.model_validate(self._c.json("POST", self._c.project_path("/runs/plan"),
                                                   json=run_spec.model_dump(mode="json")))

    def submit(self, run_spec: RunSpec) -> Run:
        body = {"run_spec": run_spec.model_dump(mode="json")}
        return _models().Run.model_validate(self._c.json("POST", self._c.project_path("/runs"), json=body))

    def apply(self, configuration_path: str | Path, *, repo_dir: str | Path = ".") -> Run:
        """Parse a configuration, upload the directory's code and submit the run (no prompt)."""
        run_spec = self.prepare(configuration_path, repo_dir=repo_dir, upload=False)
        return self.submit(self.upload_sources(run_spec, repo_dir=repo_dir))

    def prepare(self, configuration_path: str | Path, *, repo_dir: str | Path = ".", upload: bool) -> RunSpec:
        from dstack.api.code import repo_id_for
        from dstack.core.config_parser import parse_configuration
        from dstack.core.configurations import RUN_TYPES
        from dstack.core.infra_configurations import infra_not_supported

        path = Path(configuration_path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise DstackError(f"configuration file {path} not found",
                              fix="Pass the right path with -f, or create .dstack.yml") from None
        configuration = parse_configuration(text, str(path))
        if configuration.type not in RUN_TYPES:
            raise ConfigurationError(f"{path}: not supported yet: {infra_not_supported(configuration)[0]}",
                                     field="type")
        from dstack.core.sshkeys import user_key

        repo = Path(repo_dir).resolve()
        run_spec = _models().RunSpec(configuration=configuration, configuration_path=str(path),
                                     configuration_text=text if len(text) <= 65536 else None,
                                     repo_id=repo_id_for(repo), ssh_key_pub=user_key()[1])
        return self.upload_sources(run_spec, repo_dir=repo) if upload else run_spec

    def upload_sources(self, run_spec: RunSpec, *, repo_dir: str | Path = ".") -> RunSpec:
        """Upload the code (the directory, or the local repo `repos` names; none for a repo URL) and
        the `files`, and return the spec with their hashes."""
        from dstack.api.code import build_archive, build_files_archive, code_root

        conf = run_spec.configuration
        config_dir = (Path(repo_dir) / run_spec.configuration_path).resolve().parent
        root = code_root(conf, config_dir=config_dir, repo_dir=Path(repo_dir).resolve())
        update: dict[str, Any] = {}
        if root is not None:
            data, update["code_hash"] = build_archive(root)
            self._c.repos.upload_code(data, update["code_hash"])
        if conf.files:
            data, update["files_hash"] = build_files_archive(conf.files, config_dir=config_dir)
            self._c.repos.upload_code(data, update["files_hash"])
        return run_spec.model_copy(update=update)

    def list(self, *, all: bool = False, limit: int = 1000, before: str | None = None) -> list[Run]:
        """Newest first, at most `limit`; `before`: an ISO time, for the page after the one that ended there."""
        params: dict[str, Any] = {"all": all, "limit": limit, **({"before": before} if before else {})}
        data = self._c.json("GET", self._c.project_path("/runs"), params=params)
        return [_models().Run.model_validate(r) for r in data]

    def iter_all(self, *, page: int = 500, last: int | None = None) -> Iterator[Run]:
        """Every run of the project (or the `last` N), newest first, fetched a page at a time."""
        before, seen = None, 0
        while last is None or seen < last:
            runs = self.list(all=True, limit=min(page, last - seen) if last else page, before=before)
            yield from runs
            seen += len(runs)
            if len(runs) < page:
                return
            before = runs[-1].submitted_at.isoformat()

    def get(self, name: str) -> Run:
        return _models().Run.model_validate(self._c.json("GET", self._c.project_path(f"/runs/{name}")))

    def stop(self, name: str, *, abort: bool = False) -> Run:
        return _models().Run.model_validate(self._c.json("POST", self._c.project_path(f"/runs/{name}/stop"),
                                               json={"abort": abort}))

    def logs(self, name: str, *, next_token: str | None = None, job: int | None = None) -> LogPage:
        params: dict[str, Any] = {"next_token": next_token} if next_token else {}
        if job is not None:
            params["job"] = job
        return _models().LogPage.model_validate(self._c.json("GET", self._c.project_path(f"/runs/{name}/logs"),
                                                   params=params))

    def follow_logs(self, name: str, *, follow: bool = True, poll: float = 0.25,
                    job: int | None = None) -> Iterator[LogEvent]:
        """Every log line of the run's latest job (of node `job` of a multi-node task: default the
        master); with `follow`, waits until the job ends."""
        token: str | None = None
        while True:
            page = self.logs(name, next_token=token, job=job)
            yield from page.events
            token = page.next_token
            # Without `follow`, what there is now: until a page comes back empty with nothing more
            # to read now (a throttled read says there may be more, so it is not the end).
            if page.finished or (not follow and not page.events and not page.more):
                return
            if not page.events:
                time.sleep(poll)

    def attach_info(self, name: str) -> dict[str, Any]:
        return self._c.json("GET", self._c.project_path(f"/runs/{name}/attach"))

    def metrics(self, name: str) -> RunMetrics:
        return _models().RunMetrics.model_validate(self._c.json("GET", self._c.project_path(f"/runs/{name}/metrics")))

    def artifacts(self, name: str) -> list[Artifact]:
        data = self._c.json("GET", self._c.project_path(f"/runs/{name}/artifacts"))
        return [_models().Artifact.model_validate(a) for a in data]

    def download_artifact(self, name: str, path: str) -> bytes:
        return self._c.request("GET", self._c.project_path(f"/runs/{name}/artifacts/{path}")).content

    def save_artifact(self, name: str, path: str, dest: Path) -> int:
        """Stream one artifact into `dest` (written whole or not at all); returns its size."""
        import os
        import tempfile

        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        size = 0
        try:
            with os.fdopen(fd, "wb") as f, self._c.stream("GET", self._c.project_path(
                    f"/runs/{name}/artifacts/{quote(path)}")) as response:
                for chunk in response.iter_bytes():
                    f.write(chunk)
                    size += len(chunk)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

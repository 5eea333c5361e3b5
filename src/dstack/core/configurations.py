"""Run configurations (`type: task`, `dev-environment`, `service`) as upstream dstack documents them.

Parsing YAML text into these models, with errors naming file, line and field, is in
`dstack.core.config_parser`; fleets, volumes and gateways are in `dstack.core.infra_configurations`.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from dstack.core.profiles import ProfileParams, RetrySpec, parse_duration  # noqa: F401 - re-exported
from dstack.core.resources import ResourcesSpec, StrictModel

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}\Z")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_URL_RE = re.compile(r"^([a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:)", re.IGNORECASE)
WORKFLOW_DIR = "/workflow"  # the default working directory and where the code is, as upstream


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"port {value} is out of range 1-65535")
    return value


class PortMapping(StrictModel):
    """`8080` (the same port locally), `8000:80` (local:container), `*:8080` (any free local port)."""

    local_port: int | None = Field(default=None, ge=1, le=65535)
    container_port: int = Field(ge=1, le=65535)
    any_local_port: bool = Field(default=False, description="`*:PORT`: a free local port is picked")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"container_port": value}
        if isinstance(value, str):
            local, sep, container = value.strip().partition(":")
            try:
                if not sep:
                    return {"container_port": int(local)}
                if local.strip() == "*":
                    return {"container_port": int(container), "any_local_port": True}
                return {"local_port": int(local), "container_port": int(container)}
            except ValueError:
                raise ValueError(f"expected a port such as 8080, 8000:80 or *:8080, got {value!r}") from None
        return value


class RegistryAuth(StrictModel):
    """Values may reference project secrets, `${{ secrets.NAME }}`, or the run's env, `${{ env.NAME }}`."""

    username: str
    password: str = Field(repr=False)


def _split_target(text: str, *, after_url: bool = False) -> tuple[str, str | None]:
    """`SOURCE[:TARGET]`. After a URL's host a colon may start a port (`host:8443/org/repo`), so there a
    TARGET must look like a path in the container: absolute, `~…`, `.…`, or one relative name."""
    head, sep, tail = text.rpartition(":")
    if not (sep and head and tail):
        return text, None
    if after_url and not (tail.startswith(("/", "~", ".")) or ("/" not in tail and not tail[0].isdigit())):
        return text, None
    return head, tail


class RepoSpec(StrictModel):
    """A git repo in the container: a local clone (`..`, its uncommitted changes included) or a URL."""

    local_path: str | None = Field(default=None, description="a local git repo, relative to the configuration")
    url: str | None = Field(default=None, description="a git URL (https://, ssh://, git@host:org/repo.git)")
    branch: str | None = Field(default=None, description="the branch to check out (URL only)")
    hash: str | None = Field(default=None, description="the commit to check out (URL only)")
    path: str = Field(default=".", description="where in the container: relative to the working directory, "
                                               "or absolute")
    if_exists: Literal["error", "skip"] = Field(default="error", description="a non-empty `path`: fail, or "
                                                                             "leave it as it is")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if _URL_RE.match(text):
                scheme_end = text.index("://") + 3 if "://" in text else text.index(":") + 1
                source, target = _split_target(text[scheme_end:], after_url=True)
                parsed: dict[str, Any] = {"url": text[:scheme_end] + source}
            else:
                source, target = _split_target(text)
                parsed = {"local_path": source}
            if target is not None:
                parsed["path"] = target
            return parsed
        return value

    @model_validator(mode="after")
    def _one_source(self) -> RepoSpec:
        if (self.local_path is None) == (self.url is None):
            raise ValueError("give either `local_path` or `url`")
        if self.local_path is not None and (self.branch or self.hash):
            raise ValueError("`branch` and `hash` go with `url`; a local repo runs as it is checked out")
        if self.hash is not None and not re.fullmatch(r"[0-9a-fA-F]{4,64}", self.hash):
            raise ValueError(f"hash {self.hash!r} is not a commit hash")
        return self


class FilePathMapping(StrictModel):
    """A local file or directory uploaded with the run: `local[:path in the container]`."""

    local_path: str
    path: str | None = Field(default=None, description="omitted: the same relative path under the working "
                                                        "directory, or the same path for ~ and absolute ones")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            source, target = _split_target(value.strip())
            return {"local_path": source, "path": target}
        return value

    def container_path(self) -> str:
        """Where the files land: absolute, or `~/…` (the job's home), or relative to the working dir."""
        if self.path is not None:
            return self.path
        local = self.local_path
        if local.startswith(("/", "~")):
            return local
        norm = posixpath.normpath(local)
        return posixpath.basename(norm) if norm.startswith("..") else norm


class VolumeMount(StrictModel):
    """`name:/path` (a network volume) or `/instance/path:/path` (an instance directory)."""

    name: list[str] | None = Field(default=None, description="network volume name(s); one per region")
    instance_path: str | None = None
    path: str
    optional: bool = False

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            source, sep, target = value.partition(":")
            if not sep or not target.startswith("/"):
                raise ValueError(f"expected volume-name:/container/path or /instance/path:/container/path, "
                                 f"got {value!r}")
            return {"instance_path": source, "path": target} if source.startswith("/") else \
                {"name": [source], "path": target}
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            return {**value, "name": [value["name"]]}
        return value

    @model_validator(mode="after")
    def _one_source(self) -> VolumeMount:
        if (self.name is None) == (self.instance_path is None):
            raise ValueError("give either `name` (a volume) or `instance_path`")
        return self


# The versions `python` accepts (upstream's list): each has a default image (see docs/configuration.md).
PYTHON_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13")


class BaseRunConfiguration(ProfileParams):
    name: str | None = Field(default=None, description="run name; generated when omitted")
    python: str | None = Field(default=None, description="Python version, e.g. 3.12")
    image: str | None = Field(default=None, max_length=1000,
                              description="an OCI image to run the job in (Docker or Podman on the instance)")
    entrypoint: str | None = Field(default=None, description="the image's entrypoint, replaced")
    user: str | None = Field(default=None, description="the user (and group) the container runs as, e.g. 1000:1000")
    privileged: bool = Field(default=False, description="run the container privileged")
    shm_size: str | None = Field(default=None, description="the container's /dev/shm size, e.g. 8GB "
                                                           "(also resources.shm_size)")
    registry_auth: RegistryAuth | None = Field(default=None, description="credentials of a private registry")
    nvcc: bool | None = Field(default=None, description="the default image with the CUDA compiler (nvcc)")
    docker: bool | None = Field(default=None, description="Docker inside the job (a privileged Docker-in-Docker "
                                                          "container); not with `image` or `python`")
    shell: str | None = Field(default=None, description="the shell for `commands`: bash, sh or an absolute path "
                                                        "(default: bash without `image`, sh with it)")
    home_dir: str | None = Field(default=None, description="deprecated upstream and ignored")
    env: dict[str, str | None] = Field(default_factory=dict, description="environment variables")
    setup: list[str] = Field(default_factory=list, description="deprecated: commands run before the others")
    working_dir: str | None = Field(
        default=None, description="an absolute path in the container (default /workflow, where the code is); a "
                                  "relative one is under /workflow")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    priority: int = Field(default=0, ge=0, le=100, description="queue order: higher first (0-100)")
    volumes: list[VolumeMount] = Field(default_factory=list, description="volumes to mount")
    repos: list[RepoSpec] = Field(default_factory=list, description="a git repo to put in the container (at most "
                                                                    "one)")
    single_branch: bool | None = Field(default=None, description="clone only the repo's branch")
    files: list[FilePathMapping] = Field(default_factory=list, description="local files uploaded with the run")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not a valid run name: use 1-40 lowercase letters, digits and dashes, "
                "starting with a letter"
            )
        return value

    @field_validator("python", mode="before")
    @classmethod
    def _python(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, float):
            # YAML reads `python: 3.10` as the float 3.1: as upstream, 3.1 means 3.10.
            value = "3.10" if value == 3.1 else repr(value)
        value = str(value)
        if value not in PYTHON_VERSIONS:
            raise ValueError(f"expected a Python version among {', '.join(PYTHON_VERSIONS)}, got {value!r}")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        if isinstance(value, list):
            parsed: dict[str, str | None] = {}
            for item in value:
                key, sep, val = str(item).partition("=")
                if key in parsed:
                    raise ValueError(f"{key} is given twice")
                parsed[key] = val if sep else None
            value = parsed
        if isinstance(value, dict):
            for key, val in value.items():
                if not _ENV_NAME_RE.match(str(key)):
                    raise ValueError(f"{key!r} is not a valid environment variable name")
                if isinstance(val, bool | int | float):
                    value[key] = str(val).lower() if isinstance(val, bool) else str(val)
        return value

    @field_validator("shell")
    @classmethod
    def _shell(cls, value: str | None) -> str | None:
        if value is not None and value not in ("bash", "sh") and not value.startswith("/"):
            raise ValueError(f"expected bash, sh or an absolute path such as /bin/zsh, got {value!r}")
        return value

    @field_validator("working_dir")
    @classmethod
    def _working_dir(cls, value: str | None) -> str | None:
        if value is not None and ".." in value.split("/"):
            raise ValueError(f"{value!r}: `..` is not allowed; give an absolute path such as /workflow/src")
        return value

    @field_validator("repos")
    @classmethod
    def _repos(cls, value: list[RepoSpec]) -> list[RepoSpec]:
        if len(value) > 1:
            raise ValueError("at most one repo per run (as upstream)")
        return value

    @model_validator(mode="after")
    def _exclusive(self) -> BaseRunConfiguration:
        if self.python and self.image:
            raise ValueError("give either `python` or `image`, not both")
        if self.docker and (self.python or self.image):
            raise ValueError("`docker: true` runs its own Docker-in-Docker image: drop `python` and `image`")
        if self.nvcc and self.image:
            raise ValueError("`nvcc` picks the default image's CUDA variant: drop it with `image`")
        if self.shm_size and self.resources.shm_size:
            raise ValueError("give the shared memory size once: `resources.shm_size`")
        return self

    def job_working_dir(self) -> str:
        """The job's working directory in the container: absolute, `~` expanded by the job's shell."""
        wd = self.working_dir
        if wd is None:
            return WORKFLOW_DIR
        if wd.startswith(("/", "~")):
            return posixpath.normpath(wd) if wd.startswith("/") else wd
        return posixpath.normpath(f"{WORKFLOW_DIR}/{wd}")

    def repo_relative_working_dir(self) -> str | None:
        """The working directory relative to the code (/workflow), or None where it is outside it."""
        wd = self.job_working_dir()
        if wd == WORKFLOW_DIR:
            return "."
        if wd.startswith(WORKFLOW_DIR + "/"):
            return wd[len(WORKFLOW_DIR) + 1:]
        return None


def _commands_are_strings(value: Any) -> Any:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                raise ValueError("a command was read as a mapping because it contains `: `; "
                                 "quote the whole command, e.g. - 'echo \"a: b\"'")
    return value


class _PortsMixin(StrictModel):
    ports: list[PortMapping] = Field(default_factory=list, description="ports to forward: 8080, 8000:80, *:8080")


class TaskConfiguration(BaseRunConfiguration, _PortsMixin):
    type: Literal["task"]
    nodes: int = Field(default=1, ge=1, description="the number of nodes (multi-node tasks)")
    commands: list[str] = Field(default_factory=list, validate_default=True,
                                description="shell commands to run, in order (with `image`: may be omitted "
                                            "to run the image's own entrypoint and cmd)")
    artifacts: list[str] = Field(default_factory=list, description="paths saved to the bucket at the end")

    _check_commands = field_validator("commands", mode="before")(classmethod(lambda cls, v: _commands_are_strings(v)))

    @field_validator("commands", mode="after")
    @classmethod
    def _commands_or_image(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value and not info.data.get("image"):
            raise ValueError("this field is required: give at least one command (or an `image` whose own "
                             "command runs)")
        return value

    @field_validator("artifacts")
    @classmethod
    def _artifacts(cls, value: list[str]) -> list[str]:
        for path in value:
            if path.startswith("/") or ".." in path.split("/"):
                raise ValueError(f"artifact path {path!r} must be relative to the working directory")
        return value


class DevEnvironmentConfiguration(BaseRunConfiguration, _PortsMixin):
    type: Literal["dev-environment"]
    # As upstream: the IDE whose link `dstack apply` prints; none means SSH only.
    ide: Literal["vscode", "cursor", "windsurf"] | None = None
    version: str | None = Field(default=None, description="the IDE server's version")
    init: list[str] = Field(default_factory=list, description="commands to run before the IDE attaches")
    inactivity_duration: int | None = Field(default=None, description="stop after no SSH connection for this "
                                                                      "long: 2h, off")

    @field_validator("inactivity_duration", mode="before")
    @classmethod
    def _inactivity(cls, value: Any) -> int | None:
        return parse_duration(value)


from dstack.core.service_configurations import ServiceConfiguration  # noqa: E402 - it builds on the above

AnyRunConfiguration = Annotated[
    TaskConfiguration | DevEnvironmentConfiguration | ServiceConfiguration, Field(discriminator="type")
]
RUN_TYPES = ("task", "dev-environment", "service")

# Fields parsed as upstream documents them whose runtime is still to come: a run using them is
# refused at apply time with this reason (see `not_supported_yet`).
_NOT_YET: dict[str, str] = {
    "idle_duration": "keeping a run's own instance idle for reuse: use a fleet",
}


def not_supported_yet(conf: Any) -> list[tuple[str, str]]:
    """(field, what it needs) for each field this server parses but cannot run yet."""
    reasons = []
    if conf.type == "service":
        if conf.gateway not in (None, False):
            reasons.append(("gateway", "`gateway` (gateways: this server's own proxy serves services; "
                                       "drop it or set `gateway: false`)"))
        if conf.https is True:
            reasons.append(("https", "`https: true` (TLS comes with gateways; the server's proxy serves "
                                     "services at the server's own URL)"))
        if conf.model is not None and conf.model.format != "openai":
            reasons.append(("model", "`model.format: tgi` (models are served OpenAI-compatible: "
                                     "`format: openai`)"))
    if getattr(conf, "nodes", 1) > 1 and conf.schedule is not None:
        reasons.append(("schedule", "`schedule` with `nodes`"))
    for field_name, feature in _NOT_YET.items():
        value = getattr(conf, field_name, None)
        if value not in (None, [], False):
            reasons.append((field_name, f"`{field_name}` ({feature})"))
    return reasons


_SECRET_REF = re.compile(r"\$\{\{\s*(secrets|env)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def interpolate_secrets(value: str, secrets: dict[str, str], field: str, env: dict[str, str] | None = None) -> str:
    """`${{ secrets.NAME }}` replaced by the project secret NAME, `${{ env.NAME }}` by the run's env
    variable NAME (a missing one is an error naming it)."""
    from dstack.core.errors import ConfigurationError  # noqa: PLC0415

    def lookup(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2)
        source = secrets if kind == "secrets" else (env or {})
        if source.get(name) is None:
            fix = f"Set it with `dstack secrets set {name}`" if kind == "secrets" else f"Add {name} to `env`"
            where = "the project has no secret" if kind == "secrets" else "the run's env has no variable"
            raise ConfigurationError(f"{field}: {where} {name!r}", field=field, fix=fix)
        return str(source[name])

    return _SECRET_REF.sub(lookup, value)

"""The CLI/SDK config file, ~/.dstack/config.yml: servers, tokens and initialized repos."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dstack.core.errors import ConfigurationError

# Plain dataclasses, not pydantic: every CLI call reads this file, and `dstack attach -c` must not pay
# pydantic's import (~0.1 s) for three flat records.


@dataclass
class ProjectConfig:
    name: str
    url: str
    token: str
    default: bool = False


@dataclass
class RepoConfig:
    path: str
    repo_id: str
    project: str


def _records(data: dict[str, Any], key: str, cls: type) -> list[Any]:
    """`data[key]` as a list of `cls`, each field of its declared type (str, or bool for `default`)."""
    items = data.get(key) or []
    if not isinstance(items, list):
        raise ValueError(f"{key}: expected a list")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    records = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{key}[{i}]: expected a mapping")
        unknown = set(item) - set(fields)
        missing = {n for n, f in fields.items() if f.default is dataclasses.MISSING} - set(item)
        if unknown or missing:
            raise ValueError(f"{key}[{i}]: " + ", ".join([*(f"unknown field {n}" for n in sorted(unknown)),
                                                          *(f"missing field {n}" for n in sorted(missing))]))
        for name, value in item.items():
            expected = bool if name == "default" else str
            if not isinstance(value, expected):
                raise ValueError(f"{key}[{i}].{name}: expected a {expected.__name__}")
        records.append(cls(**item))
    return records


@dataclass
class CLIConfig:
    projects: list[ProjectConfig] = field(default_factory=list)
    repos: list[RepoConfig] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Any) -> CLIConfig:
        if not isinstance(data, dict):
            raise ValueError("expected a mapping with `projects` and `repos`")
        return cls(projects=_records(data, "projects", ProjectConfig), repos=_records(data, "repos", RepoConfig))

    def project(self, name: str | None = None) -> ProjectConfig:
        if not self.projects:
            raise ConfigurationError(
                f"no dstack server is configured in {config_path()}",
                fix="Start one with `dstack server` (it writes this file), or run `dstack config`",
            )
        for project in self.projects:
            if (name is None and project.default) or project.name == name:
                return project
        default = next((p for p in self.projects if p.default), self.projects[0])
        if name is None:
            return default
        # Another project on the default server: the same token, the server checks membership.
        return ProjectConfig(name=name, url=default.url, token=default.token)

    def set_project(self, project: ProjectConfig) -> None:
        if project.default:
            for p in self.projects:
                p.default = False
        self.projects = [p for p in self.projects if p.name != project.name] + [project]

    def repo_for(self, path: Path) -> RepoConfig | None:
        """The initialized repo `path` is in: itself, or its nearest initialized parent."""
        by_path = {repo.path: repo for repo in self.repos}
        resolved = path.resolve()
        for candidate in (resolved, *resolved.parents):
            if str(candidate) in by_path:
                return by_path[str(candidate)]
        return None

    def set_repo(self, repo: RepoConfig) -> None:
        self.repos = [r for r in self.repos if r.path != repo.path] + [repo]


def config_path() -> Path:
    return Path(os.environ.get("DSTACK_CONFIG", Path.home() / ".dstack" / "config.yml"))


def load_config() -> CLIConfig:
    path = config_path()
    if not path.exists():
        return CLIConfig()
    try:
        return CLIConfig.from_dict(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigurationError(f"{path} is not a valid dstack config: {exc}".splitlines()[0],
                                 fix="Fix or delete the file") from None


def save_config(config: CLIConfig) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # The file holds tokens: readable by its owner only.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(dataclasses.asdict(config), f, sort_keys=False)
    os.replace(tmp, path)

"""The CLI/SDK config file, ~/.dstack/config.yml: servers, tokens and initialized repos."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from dstack.core.errors import ConfigurationError


class ProjectConfig(BaseModel):
    name: str
    url: str
    token: str
    default: bool = False


class RepoConfig(BaseModel):
    path: str
    repo_id: str
    project: str


class CLIConfig(BaseModel):
    projects: list[ProjectConfig] = Field(default_factory=list)
    repos: list[RepoConfig] = Field(default_factory=list)

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
        resolved = str(path.resolve())
        for repo in self.repos:
            if repo.path == resolved:
                return repo
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
        return CLIConfig.model_validate(yaml.safe_load(path.read_text()) or {})
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
        yaml.safe_dump(config.model_dump(), f, sort_keys=False)
    os.replace(tmp, path)

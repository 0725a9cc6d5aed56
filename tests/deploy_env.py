"""Read docker/compose.yaml the way Docker Compose does, for tests and CI without a Docker engine.

Why: the CI end-to-end run of the distributed configuration (Postgres + a Chroma server + a separate
model server) takes the API's environment from compose.yaml itself, so the file is exercised, not
only schema-checked. ``compose_service_env("api", "cpu", ports=...)`` returns that environment with
Compose's ``${VAR:-default}`` interpolation resolved and every compose host (``postgres``,
``chroma``, ``model-server``, ...) rewritten to 127.0.0.1 and the port the test's own server
listens on. ``compose_service_command`` gives a service's ``command`` with container paths
rewritten the same way (the model server's ``--adapter refusal=/adapters/refusal``).

What is modelled, after the Compose Specification: YAML merge keys (``<<``); interpolation
(``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``, ``${VAR:?e}``, ``${VAR?e}``, ``${VAR:+r}``,
``${VAR+r}``, nesting in d/e/r, ``$$`` for a literal ``$``); profiles (a service without
``profiles`` is always on); network aliases as names; ``environment`` as a mapping or a list;
a variable without a value passed through from the interpolation variables, or left out.
Not modelled: ``env_file`` (the compose file uses none), ``extends``, ``include``.

Importable as ``deploy_env`` (tests/ is on sys.path, see tests/conftest.py).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker" / "compose.yaml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
LOOPBACK = "127.0.0.1"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:-|-|:\?|\?|:\+|\+)(.*))?", re.DOTALL)
_ENV_LINE = re.compile(r"^\s*(#\s*)?(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


class ComposeError(ValueError):
    """The compose file (or a variable it needs) cannot be resolved; the message says why."""


# --- files ------------------------------------------------------------------------------------


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as Compose sees it before interpolation (merge keys resolved)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ComposeError(f"{path} has no services")
    return data


def read_env_file(path: Path = ENV_EXAMPLE, *, include_commented: bool = False) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file (as Compose's --env-file reads them).

    With ``include_commented``, ``# KEY=VALUE`` lines count too: .env.example documents optional
    settings that way, and a typo there is as harmful once a user uncomments it.
    """
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _ENV_LINE.match(line)
        if not m or (m.group(1) and not include_commented):
            continue
        value = m.group(3).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[m.group(2)] = value
    return values


# --- interpolation --------------------------------------------------------------------------


def _closing_brace(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``${`` whose ``{`` is at ``start``."""
    depth, i = 0, start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ComposeError(f"unclosed ${{ in {text!r}")


def _expand(body: str, variables: Mapping[str, str], text: str) -> str:
    m = _BRACED.fullmatch(body)
    if not m:
        raise ComposeError(f"invalid interpolation ${{{body}}} in {text!r}")
    name, op, arg = m.group(1), m.group(2), m.group(3) or ""
    value = variables.get(name)
    is_set, non_empty = value is not None, bool(value)
    if op is None:
        return value or ""
    if op == ":-":
        return value if non_empty else interpolate(arg, variables)
    if op == "-":
        return value if is_set else interpolate(arg, variables)
    if op in (":?", "?"):
        if (op == ":?" and not non_empty) or (op == "?" and not is_set):
            reason = interpolate(arg, variables) or "is required"
            raise ComposeError(f"required variable {name} is missing a value: {reason}")
        return value or ""
    if op == ":+":
        return interpolate(arg, variables) if non_empty else ""
    return interpolate(arg, variables) if is_set else ""  # "+"


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Resolve Compose interpolation in one string."""
    out: list[str] = []
    i = 0
    while i < len(text):
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        nxt = text[j + 1 : j + 2]
        if nxt == "$":
            out.append("$")
            i = j + 2
        elif nxt == "{":
            end = _closing_brace(text, j + 1)
            out.append(_expand(text[j + 2 : end], variables, text))
            i = end + 1
        else:
            m = _NAME.match(text, j + 1)
            if not m:
                raise ComposeError(f"invalid interpolation format at {text[j:]!r} (use $$ for a literal $)")
            out.append(variables.get(m.group(), ""))
            i = m.end()
    return "".join(out)


def interpolate_tree(node: Any, variables: Mapping[str, str]) -> Any:
    """Interpolate every string value of a loaded compose document (keys are left alone)."""
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [interpolate_tree(v, variables) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, variables) for k, v in node.items()}
    return node


def referenced_variables(node: Any) -> set[str]:
    """Names of every variable the document interpolates (defaults and nested ones included)."""
    names: set[str] = set()
    if isinstance(node, str):
        text = node.replace("$$", "")
        names.update(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text))
    elif isinstance(node, list):
        for v in node:
            names |= referenced_variables(v)
    elif isinstance(node, dict):
        for v in node.values():
            names |= referenced_variables(v)
    return names


# --- services, profiles, hosts ----------------------------------------------------------------


def service_enabled(service: Mapping[str, Any], profile: str | None) -> bool:
    """Compose's rule: no ``profiles`` means always on; otherwise the profile must be listed."""
    profiles = service.get("profiles")
    return not profiles or (profile is not None and profile in profiles)


def network_names(name: str, service: Mapping[str, Any]) -> set[str]:
    """The names a service answers to on the compose network: its own and its aliases."""
    names = {name}
    networks = service.get("networks")
    if isinstance(networks, dict):
        for config in networks.values():
            if isinstance(config, dict):
                names.update(config.get("aliases") or [])
    return names


def find_service(compose: Mapping[str, Any], name: str, profile: str | None) -> tuple[str, dict[str, Any]]:
    """The one service enabled under ``profile`` that answers to ``name`` (service name or alias)."""
    services = compose["services"]
    enabled = {n: s for n, s in services.items() if service_enabled(s, profile)}
    matches = [n for n, s in enabled.items() if name in network_names(n, s)]
    if len(matches) == 1:
        return matches[0], enabled[matches[0]]
    if not matches:
        elsewhere = sorted(n for n, s in services.items() if name in network_names(n, s))
        hint = f" (defined for other profiles: {', '.join(elsewhere)})" if elsewhere else ""
        raise ComposeError(f"no service answers to {name!r} under profile {profile!r}{hint}")
    raise ComposeError(f"several services answer to {name!r} under profile {profile!r}: {matches}")


def host_names(compose: Mapping[str, Any], profile: str | None) -> dict[str, str]:
    """Every name reachable on the compose network under ``profile`` -> the service behind it."""
    hosts: dict[str, str] = {}
    for n, s in compose["services"].items():
        if service_enabled(s, profile):
            for alias in network_names(n, s):
                hosts[alias] = n
    return hosts


def _environment(service: Mapping[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, None) for item in env)
        return {k: v for k, v in pairs}
    out: dict[str, str | None] = {}
    for k, v in env.items():
        if isinstance(v, bool):
            out[k] = "true" if v else "false"
        else:
            out[k] = None if v is None else str(v)
    return out


def _rewrite_host(value: str, hosts: Mapping[str, str], ports: Mapping[str, int], needed: set[str]) -> str:
    """Point a URL whose host is a compose service at 127.0.0.1 and the test's port for it.

    Only URLs: a bare word may equal a service name by chance (CANDOR_LLM_BACKEND=tgi).
    """
    if "://" not in value:
        return value
    parts = urlsplit(value)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
    if host not in hosts:
        return value
    needed.add(host)
    port = ports.get(host, ports.get(hosts[host]))
    if port is None:
        return value  # reported by the caller, with every other missing port
    netloc = f"{userinfo}@{LOOPBACK}:{port}" if userinfo else f"{LOOPBACK}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _rewrite_path(value: str, paths: Mapping[str, Path | str]) -> str:
    for container, local in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        prefix = container.rstrip("/")
        if value == prefix or value.startswith(prefix + "/"):
            return str(local) + value[len(prefix) :]
    return value


def _scope(variables: Mapping[str, str] | None, env_file: Path | None) -> dict[str, str]:
    """The interpolation variables: the env file's uncommented values, then ``variables`` over them."""
    scope = dict(read_env_file(env_file)) if env_file is not None else {}
    scope.update(variables or {})
    return scope


def compose_service_command(
    service_name: str,
    profile: str | None,
    *,
    variables: Mapping[str, str] | None = None,
    paths: Mapping[str, Path | str] | None = None,
    compose_file: Path = COMPOSE_FILE,
    env_file: Path | None = ENV_EXAMPLE,
) -> list[str]:
    """The ``command`` Compose runs ``service_name`` with, interpolated, for a local process.

    Container paths are rewritten with ``paths`` (as in compose_service_env), both whole arguments
    (``/models/base``) and the value of ``name=/path`` ones (``--adapter refusal=/adapters/refusal``).
    The image's entrypoint is not part of it (``candor`` or ``candor-volumes``: the caller knows).
    """
    _, service = find_service(load_compose(compose_file), service_name, profile)
    command = service.get("command") or []
    if isinstance(command, str):
        command = shlex.split(command)
    scope = _scope(variables, env_file)
    out: list[str] = []
    for raw in command:
        arg = interpolate(str(raw), scope)
        name, sep, value = arg.partition("=")
        if sep and value.startswith("/"):
            out.append(name + sep + _rewrite_path(value, paths or {}))
        else:
            out.append(_rewrite_path(arg, paths or {}))
    return out


def compose_service_env(
    service_name: str,
    profile: str | None,
    *,
    ports: Mapping[str, int] | None = None,
    variables: Mapping[str, str] | None = None,
    paths: Mapping[str, Path | str] | None = None,
    compose_file: Path = COMPOSE_FILE,
    env_file: Path | None = ENV_EXAMPLE,
) -> dict[str, str]:
    """The environment Compose gives ``service_name`` under ``profile``, ready for a local process.

    - ``service_name``: a service or a network alias (``"api"`` is api-cpu under profile cpu).
    - ``variables``: the interpolation environment (what the shell and ``--env-file`` give Compose),
      laid over the uncommented values of ``env_file`` (.env.example). ``POSTGRES_PASSWORD`` has no
      default on purpose: pass it.
    - ``ports``: the local port of each compose host the environment refers to, by service name or
      alias, e.g. ``{"postgres": 55432, "chroma": 8001, "model-server": 8081}``. Every referenced
      host needs one (a ComposeError lists the missing ones): a forgotten port must not quietly
      leave a value pointing at a host that does not exist outside Compose.
    - ``paths``: container path prefix -> local path, e.g. ``{"/data": tmp, "/models": cache}``.

    Variables without a value in the compose file are taken from ``variables`` when set there and
    left out otherwise (Settings then uses its default), as Compose does.
    """
    compose = load_compose(compose_file)
    found, service = find_service(compose, service_name, profile)
    scope = _scope(variables, env_file)
    hosts = host_names(compose, profile)
    needed: set[str] = set()
    env: dict[str, str] = {}
    for key, raw in _environment(service).items():
        if raw is None:
            if key in scope:
                env[key] = scope[key]
            continue
        value = interpolate(raw, scope)
        value = _rewrite_host(value, hosts, ports or {}, needed)
        env[key] = _rewrite_path(value, paths or {})
    missing = sorted(h for h in needed if h not in (ports or {}) and hosts[h] not in (ports or {}))
    if missing:
        raise ComposeError(
            f"{found} refers to compose hosts {missing}: pass their local ports, e.g. "
            f"ports={{{', '.join(repr(m) + ': ...' for m in missing)}}}"
        )
    return env

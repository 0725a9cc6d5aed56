#!/usr/bin/env python3
"""Container health probe: GET a path on this container's own server; exit 0 on 2xx, 1 otherwise.

Installed in the images as ``candor-healthcheck`` and used by their HEALTHCHECK lines:

    candor-healthcheck /readyz                                         # the API (CANDOR_API_PORT)
    candor-healthcheck /health --port-env CANDOR_MODEL_SERVER_PORT --default-port 8080

Why a script and not curl: the slim Python base has no curl, and installing it (with apt
metadata) into every image only for a probe adds more than these few lines of stdlib. The port
is read from the same CANDOR_ variable the server binds to, so the probe cannot drift from it.
Proxies are ignored on purpose: an HTTP_PROXY set for the container must not receive the probe.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request


def probe(url: str, timeout_s: float) -> tuple[bool, str]:
    """Return (healthy, a short reason). Never raises: a probe reports, it does not crash."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        body = exc.read(300).decode("utf-8", errors="replace").strip()
        return False, f"HTTP {exc.code} {body}".strip()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"unreachable: {getattr(exc, 'reason', exc)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="candor-healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="URL path to GET, e.g. /readyz")
    parser.add_argument("--port-env", default="CANDOR_API_PORT", help="variable holding the port")
    parser.add_argument("--default-port", type=int, default=8000, help="port when the variable is unset")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds")
    args = parser.parse_args(argv)

    port = os.environ.get(args.port_env, "").strip() or str(args.default_port)
    path = args.path if args.path.startswith("/") else f"/{args.path}"
    url = f"http://{args.host}:{port}{path}"
    healthy, reason = probe(url, args.timeout)
    print(f"{url}: {reason}", file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())

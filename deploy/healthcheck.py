"""Container health probe: GET http://127.0.0.1:$INTEREST_WEB_PORT/health, exit 0 on HTTP 2xx.

Standard library only (the slim images carry no curl/wget).  Used by the
images' HEALTHCHECK and by docker compose; Kubernetes uses httpGet probes.

    python /opt/interest/healthcheck.py            # liveness: /health
    python /opt/interest/healthcheck.py /ready     # readiness: partitions assigned and a model loaded
    python /opt/interest/healthcheck.py /ready --split   # `interest worker --split`: both stages

``--split``: the update process serves on ``$INTEREST_WEB_PORT`` and the ingest process on the port
after it; the pod is healthy (ready) only when both are, and one probe (Kubernetes allows one per kind)
has to ask both.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def probe(path: str = "/health", port: int | None = None, timeout: float = 3.0) -> int:
    """0 if the worker answers 2xx on ``path``, else 1 (with the reason on stderr)."""
    if port is None:
        port = int(os.environ.get("INTEREST_WEB_PORT", "6066"))
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed loopback URL)
            if 200 <= resp.status < 300:
                return 0
            print(f"unhealthy: {url} answered {resp.status}", file=sys.stderr)
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: {url} answered {exc.code}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    split = "--split" in argv
    paths = [a for a in argv if a != "--split"]
    path = paths[0] if paths else "/health"
    base = int(os.environ.get("INTEREST_WEB_PORT", "6066"))
    ports = [base, base + 1] if split else [base]
    # Every port is asked (stderr names each failing one), within the one probe's time: 2 s each with --split
    # (worker-split.yaml gives the exec probe 6 s, Python's start included).
    return max(probe(path, port, timeout=2.0 if split else 3.0) for port in ports)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Container health probe: GET http://127.0.0.1:$INTEREST_WEB_PORT/health, exit 0 on HTTP 2xx.

Standard library only (the slim images carry no curl/wget).  Used by the
images' HEALTHCHECK and by docker compose; Kubernetes uses httpGet probes.

    python /opt/interest/healthcheck.py            # liveness: /health
    python /opt/interest/healthcheck.py /ready     # readiness: partitions assigned and a model loaded
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


if __name__ == "__main__":
    sys.exit(probe(sys.argv[1] if len(sys.argv) > 1 else "/health"))

"""``python -m testkit.cqlserver --port 9042``: run the fake Cassandra as a process for other tools.

Prints ``cqlserver listening on 127.0.0.1:PORT[,PORT...]`` once ready, then
serves until interrupted.
"""

from __future__ import annotations

import argparse
import signal
import threading

from .server import CqlServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m testkit.cqlserver", description=__doc__)
    parser.add_argument("--port", type=int, default=9042, help="port of the first node (0: any free port)")
    parser.add_argument("--nodes", type=int, default=1, help="fake nodes, each on its own port")
    parser.add_argument("--user", help="require PasswordAuthenticator with this user")
    parser.add_argument("--password", default="cassandra")
    parser.add_argument("--release-version", default="5.0.2", help="e.g. 4.1.5 to refuse vectors and SAI")
    args = parser.parse_args(argv)
    users = {args.user: args.password} if args.user else None
    server = CqlServer(args.nodes, users=users, release_version=args.release_version, port=args.port).start()
    ports = ",".join(str(n.port) for n in server.nodes)
    print(f"cqlserver listening on {server.host}:{ports}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()

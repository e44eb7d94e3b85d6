"""Dockerfiles, their build-context filters, the pinned requirement files and the health probe.

No Docker engine is needed: the Dockerfiles are parsed, not built. What a build would
catch late (a COPY of a file the .dockerignore filters out, torch sneaking into the
worker, a CUDA base that does not match the onnxruntime-gpu wheel) is checked here.
"""

from __future__ import annotations

import fnmatch
import http.server
import importlib.util
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
WORKER_FILES = ("Dockerfile.worker", "Dockerfile.worker-gpu")
ALL_FILES = (*WORKER_FILES, "Dockerfile.trainer")
LOCKS = {
    "Dockerfile.worker": "requirements-worker.txt",
    "Dockerfile.worker-gpu": "requirements-worker-gpu.txt",
    "Dockerfile.trainer": "requirements-trainer.txt",
}
TRAIN_ONLY = {"torch", "transformers", "onnx", "onnxscript", "onnx-ir", "tokenizers", "safetensors"}
K8S_UID = 10001


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse(path: Path) -> tuple[dict[str, str], list[Instruction]]:
    """Global ARG defaults and the instructions (continuations joined, comments dropped)."""
    logical: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    args: dict[str, str] = {}
    out: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        if keyword == "ARG" and stage == -1 and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        out.append(Instruction(keyword, rest.strip(), stage))
    return args, out


def final_stage(path: Path) -> list[Instruction]:
    _, instructions = parse(path)
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def exec_form(args: str) -> list[str]:
    value = yaml.safe_load(args) if args.startswith("[") else shlex.split(args)
    assert isinstance(value, list)
    return [str(v) for v in value]


def copy_sources(path: Path) -> Iterator[str]:
    for ins in parse(path)[1]:
        if ins.keyword != "COPY":
            continue
        words = shlex.split(ins.args)
        if any(w.startswith("--from") for w in words):
            continue
        yield from [w for w in words if not w.startswith("--")][:-1]


def lock_pins(name: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"{name}: not a name==version pin: {line!r}"
        key = canonicalize_name(match[1])
        assert key not in pins, f"{name}: {key} pinned twice"
        pins[key] = match[2]
    return pins


# --------------------------------------------------------------- all images
@pytest.mark.parametrize("name", ALL_FILES)
def test_runs_as_a_numeric_non_root_user(name: str) -> None:
    users = [i.args for i in final_stage(DEPLOY / name) if i.keyword == "USER"]
    assert users, f"{name}: no USER in the final stage, the image would run as root"
    uid = users[-1].split(":")[0]
    # Numeric: Kubernetes' runAsNonRoot can only verify a numeric USER.
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {users[-1]}"
    assert int(uid) == K8S_UID, "the Kubernetes pods run as 10001 too (owner of /registry)"


@pytest.mark.parametrize("name", ALL_FILES)
def test_base_images_are_pinned(name: str) -> None:
    args, instructions = parse(DEPLOY / name)
    for ins in instructions:
        if ins.keyword != "FROM":
            continue
        image = ins.args.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), image)
        if ":" not in image and "@" not in image:
            stages = {
                i.args.split()[-1] for i in instructions if i.keyword == "FROM" and " AS " in i.args.upper()
            }
            assert image in stages, f"{name}: unpinned base {image}"
            continue
        assert not image.endswith(":latest"), f"{name}: {image}"


@pytest.mark.parametrize("name", ALL_FILES)
def test_entrypoint_is_the_interest_cli_under_tini(name: str) -> None:
    final = final_stage(DEPLOY / name)
    entry = exec_form(next(i.args for i in reversed(final) if i.keyword == "ENTRYPOINT"))
    assert entry[0] == "tini" and entry[-1] == "interest", entry
    cmd = exec_form(next(i.args for i in reversed(final) if i.keyword == "CMD"))
    expected = ["worker"] if name in WORKER_FILES else ["trainer"]
    assert cmd[:1] == expected


@pytest.mark.parametrize("name", ALL_FILES)
def test_copy_sources_exist_and_pass_the_dockerignore(name: str) -> None:
    ignore = DEPLOY / f"{name}.dockerignore"
    assert ignore.exists(), f"BuildKit reads deploy/{name}.dockerignore; without it .venv/ is sent"
    rules = [r.strip() for r in ignore.read_text().splitlines() if r.strip() and not r.startswith("#")]
    assert rules[0] == "*", "allow-list: start by excluding everything"
    allowed = [r[1:].rstrip("/") for r in rules if r.startswith("!")]

    def sent(path: str) -> bool:
        return any(fnmatch.fnmatch(path, a) or path.startswith(a + "/") for a in allowed)

    for forbidden in (".venv", ".git", "data", "tests"):
        assert not sent(forbidden), f"{ignore.name} sends {forbidden}/"
    for src in copy_sources(DEPLOY / name):
        if any(ch in src for ch in "*?["):
            # Optional files only (README.m[d]): each one that exists must be sent.
            for match in ROOT.glob(src):
                assert sent(match.relative_to(ROOT).as_posix()), f"{name}: COPY {src} filtered out"
            continue
        assert (ROOT / src).exists(), f"{name}: COPY {src}: not in the repository"
        assert sent(src), f"{name}: COPY {src} is filtered out by {ignore.name}"


# ----------------------------------------------------------------- workers
@pytest.mark.parametrize("name", WORKER_FILES)
def test_worker_healthcheck_and_port(name: str) -> None:
    final = final_stage(DEPLOY / name)
    checks = [i.args for i in final if i.keyword == "HEALTHCHECK"]
    assert checks, f"{name}: no HEALTHCHECK"
    cmd = checks[-1].split("CMD", 1)[1]
    assert "healthcheck.py" in cmd and "/health" in cmd and "/ready" not in cmd
    exposed = {p for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
    assert "6066" in exposed
    copied = [i.args for i in final if i.keyword == "COPY" and "healthcheck.py" in i.args]
    assert copied and "/opt/interest/healthcheck.py" in copied[0]


@pytest.mark.parametrize("name", WORKER_FILES)
def test_worker_image_has_no_torch(name: str) -> None:
    instructions = parse(DEPLOY / name)[1]
    text = "\n".join(f"{i.keyword} {i.args}" for i in instructions)
    installs = [
        cmd for i in instructions if i.keyword == "RUN" for cmd in i.args.split("&&") if "pip install" in cmd
    ]
    assert installs
    for cmd in installs:
        for needle in ("torch", "[train]", "transformers", "onnx "):
            assert needle not in cmd, f"{name} installs {needle}: {cmd.strip()}"
    for needle in ("requirements-trainer", "download.pytorch.org"):
        assert needle not in text, f"{name} mentions {needle}"
    assert LOCKS[name] in text
    # The build itself fails if anything pulled torch in.
    assert "find_spec('torch')" in text
    pins = lock_pins(LOCKS[name])
    assert not TRAIN_ONLY & set(pins), f"{LOCKS[name]}: {sorted(TRAIN_ONLY & set(pins))}"


def test_cpu_and_gpu_worker_locks_differ_only_in_onnxruntime() -> None:
    cpu, gpu = lock_pins("requirements-worker.txt"), lock_pins("requirements-worker-gpu.txt")
    assert "onnxruntime-gpu" not in cpu and "onnxruntime" in cpu
    assert "onnxruntime" not in gpu and "onnxruntime-gpu" in gpu
    assert cpu.pop("onnxruntime") == gpu.pop("onnxruntime-gpu")
    assert cpu == gpu


def test_gpu_base_matches_the_onnxruntime_gpu_build() -> None:
    """The CUDA image must carry the CUDA major the onnxruntime-gpu wheel was built for."""
    spec = importlib.util.find_spec("onnxruntime")
    info = Path(spec.origin).parent / "capi" / "build_and_package_info.py" if spec and spec.origin else None
    if info is None or not info.exists():
        pytest.skip("onnxruntime is not installed here")
    text = info.read_text()
    if "'onnxruntime-gpu'" not in text and '"onnxruntime-gpu"' not in text:
        pytest.skip("the CPU onnxruntime is installed; the CUDA build's version is unknown here")
    cuda = re.search(r"cuda_version\s*=\s*['\"](\d+)\.(\d+)", text)
    assert cuda, text
    version = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
    assert version and lock_pins("requirements-worker-gpu.txt")["onnxruntime-gpu"] == version[1]
    args, _ = parse(DEPLOY / "Dockerfile.worker-gpu")
    base = args["CUDA_IMAGE"]
    tag = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-ubuntu[\d.]+", base)
    assert tag, f"CUDA_IMAGE {base} is not an nvidia/cuda cuDNN runtime image"
    assert tag[1] == cuda[1], f"onnxruntime-gpu needs CUDA {cuda[1]}.x, the base has {tag[1]}.{tag[2]}"
    assert (int(tag[1]), int(tag[2])) >= (int(cuda[1]), int(cuda[2]))


# ----------------------------------------------------------------- trainer
def test_trainer_installs_cpu_torch_and_the_train_extra() -> None:
    text = "\n".join(f"{i.keyword} {i.args}" for i in parse(DEPLOY / "Dockerfile.trainer")[1])
    assert ".[train]" in text
    assert "requirements-trainer.txt" in text
    assert "download.pytorch.org/whl/cpu" in text
    pins = lock_pins("requirements-trainer.txt")
    assert pins["torch"].split("+")[0] == "2.13.0"
    assert pins["torch"].endswith("+cpu"), "the PyPI linux wheel is the CUDA build"
    assert "onnxruntime-gpu" not in pins


# ------------------------------------------------------------------- locks
def test_locks_satisfy_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = [Requirement(r) for r in project["dependencies"]]
    train = [Requirement(r) for r in project["optional-dependencies"]["train"]]
    env = {"sys_platform": "linux", "platform_machine": "x86_64", "python_version": "3.11"}
    for lock, reqs in (
        ("requirements-worker.txt", core),
        ("requirements-worker-gpu.txt", core),
        ("requirements-trainer.txt", core + train),
    ):
        pins = lock_pins(lock)
        for req in reqs:
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name: str = canonicalize_name(req.name)
            if name == "onnxruntime-gpu" and "onnxruntime" in pins:
                name = "onnxruntime"  # the CPU wheel of the same version, by design
            assert name in pins, f"{lock}: {req.name} is a dependency but not pinned"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"{lock}: {name}=={pins[name]} vs {req}"
            )


# -------------------------------------------------------- healthcheck.py
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base)
        pass


def _run_probe(port: int, *args: str) -> int:
    env = {"INTEREST_WEB_PORT": str(port), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py"), *args], env=env, capture_output=True, timeout=20
    )
    return proc.returncode


def test_healthcheck_script_follows_the_http_status() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert _run_probe(port) == 0
        assert _run_probe(port, "/health") == 0
        assert _run_probe(port, "/ready") == 1
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert _run_probe(closed) == 1


def test_healthcheck_split_needs_both_processes() -> None:
    """``--split``: the update process on the port, the ingest one on the port after; both must answer."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)]
    port = servers[0].server_address[1]
    try:
        servers.append(http.server.ThreadingHTTPServer(("127.0.0.1", port + 1), _Handler))
    except OSError:
        servers[0].server_close()
        pytest.skip(f"port {port + 1} is taken")
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert _run_probe(port, "/health", "--split") == 0
        assert _run_probe(port, "/ready", "--split") == 1
        gone = servers.pop()  # the ingest process is gone: the pod is not healthy
        gone.shutdown()
        gone.server_close()
        assert _run_probe(port, "/health") == 0
        assert _run_probe(port, "/health", "--split") == 1
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()

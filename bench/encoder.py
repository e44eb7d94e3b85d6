"""Encoder speed: onnxruntime vs PyTorch eager on the same weights, CPU; CUDA fp32/fp16 with IOBinding.

    python -m bench.encoder [--batches 1,4,16,64,256,1024] [--seqs 50,200] [--quick]

Model: the bench model (default production architecture, trained once and cached).  Its context is
the worker's ``seq_len`` (50); for sequence 200 the same weights are exported again with the
position table tiled to 200 rows: identical network, longer context, which is what speed depends
on.  Inputs are full-length sequences (every row padded to exactly the sequence length: the
worst case; the worker buckets shorter ones) featurised once, so both backends time the network
alone.  ``runtime_people_per_s`` adds what the worker also pays per batch (featurisation,
bucketing) through ``EncoderRuntime.encode``.

Threads: onnxruntime uses the worker's session options (no spinning) and is timed with one and
``--threads`` (default the worker's ``min(4, cores)``) intra-op threads and the way the worker runs
it, ``--threads`` lanes of one thread (``model.cpu_lanes``); PyTorch eager with one and ``--threads``
threads.  The fastest counts for each, so a busy shared machine cannot make either side look worse
than it is; every CPU point is timed on a thread that flushes denormals, as the lanes do.
``torch_lanes_people_per_s`` (PyTorch in the same lanes) and the ``traced`` variant (the TorchScript
graph, before ``model.fused_graph``) are reported beside them.

CUDA: only when onnxruntime's CUDAExecutionProvider really runs the graph (driver present, device
initialises, session does not fall back); then fp32 and fp16 graphs with IOBinding, inputs already
on the device (``device``) and copied from host each call (``host``, what the worker does).
Targets: ORT >= 2x PyTorch eager at batch 256 (sequence 50) on CPU; >= 1M people/s on an H100.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BENCH_DIR, command, emit, ensure_model, machine, out_dir, plot_path, ratio, say, target

TARGET_CPU_RATIO, TARGET_GPU_PEOPLE_S = 2.0, 1_000_000.0


def time_call(fn: Callable[[], Any], min_time: float, max_reps: int = 200) -> float:
    """Median seconds per call after one warm-up call, repeating for at least ``min_time``."""
    fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - started < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def full_sequences(count: int, length: int, seed: int) -> list[list[Any]]:
    """``count`` sequences of exactly ``length`` events over a 5 000-item catalogue."""
    from schemas.sequence import SeqEvent

    rng = np.random.default_rng(seed)
    platforms, actions = ("web", "app", "mini", "tv"), ("browse", "click", "purchase")
    out = []
    for b in range(count):
        stamps = 1_700_000_000_000 + np.cumsum(rng.integers(1_000, 3_600_000, size=length))
        items, acts, plats = rng.integers(0, 5000, size=length), rng.integers(0, 3, size=length), rng.integers(0, 4,
                                                                                                            size=length)
        out.append([SeqEvent(f"b{b}-{i}", int(stamps[i]), f"i{items[i]}", actions[acts[i]], platforms[plats[i]])
                    for i in range(length)])
    return out


def models_for(registry: str, version: str, seq: int, cache: Path) -> tuple[Any, Path, Path]:
    """(PyTorch module, fp32 ONNX path, fp16 ONNX path) with the bench weights and context ``seq``."""
    import torch

    from bench.naive import load_torch_model
    from model.encoder import InterestEncoder
    from model.features import FeatureSpec
    from model.registry import Registry

    model = load_torch_model(registry, version, threads=None)
    if seq <= model.spec.max_len:
        reg = Registry(registry)
        return model, reg.model_path(version), reg.model_path(version, fp16=True)
    spec = FeatureSpec.from_dict({**model.spec.to_dict(), "max_len": seq})
    longer = InterestEncoder(spec, model.cfg)
    state = dict(model.state_dict())
    pos = state["pos_emb.weight"]
    state["pos_emb.weight"] = pos.repeat(math.ceil(seq / pos.shape[0]), 1)[:seq].clone()
    longer.load_state_dict(state)
    longer.eval()
    directory = cache / f"{version}-L{seq}"
    if not (directory / "model_fp16.onnx").is_file():
        from model.export import export_all

        say(f"exporting the bench weights with context {seq} to {directory}")
        with torch.no_grad():
            export_all(longer, directory, fp16=True)
    return longer, directory / "model.onnx", directory / "model_fp16.onnx"


def traced_variant(model: Any, seq: int, cache: Path) -> Path:
    """The same weights as the TorchScript export (plain ONNX ops, last block pruned): the graph ``model.onnx``
    was before it was written with fused kernels, kept as a variant to compare with."""
    from model.export import export_traced, sequence_graph

    path = cache / f"traced-L{seq}.onnx"  # exported again every run: the bench model may have changed
    export_traced(sequence_graph(model), path)
    return path


def ort_session(path: Path, threads: int, cuda: bool = False) -> Any:
    """A session configured like the worker's (``model.runtime``): intra-op threads, no spinning."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list[Any] = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"] if cuda else [
        "CPUExecutionProvider"]
    return ort.InferenceSession(str(path), opts, providers=providers)


def cuda_status(path: Path) -> str | None:
    """None when CUDA really runs the graph, else why it is skipped."""
    from model.runtime import cuda_usable

    if not cuda_usable():
        return "no usable CUDA device or no CUDAExecutionProvider"
    try:
        session = ort_session(path, 1, cuda=True)
        if session.get_providers()[0] != "CUDAExecutionProvider":
            return f"onnxruntime fell back to {session.get_providers()}"
    except Exception as exc:  # a broken CUDA install must not stop the CPU numbers
        return f"CUDA session failed: {type(exc).__name__}: {exc}"
    return None


def ort_modes(path: Path, threads: int) -> dict[str, Callable[[dict[str, np.ndarray]], Any]]:
    """Ways to spend ``threads`` cores on one call: intra-op threads (1 and ``threads``), and what the worker
    does, ``threads`` side-by-side lanes of one intra-op thread each (``model.cpu_lanes``)."""
    from model.cpu_lanes import run_in_lanes

    sessions = {n: ort_session(path, n) for n in sorted({threads, 1})}
    output = sessions[1].get_outputs()[0].name
    modes: dict[str, Callable[[dict[str, np.ndarray]], Any]] = {
        f"intra{n}": partial(sess.run, [output]) for n, sess in sessions.items()}
    single = sessions[1]
    for lanes in sorted({1, threads}):  # one lane: one thread, on a lane thread (denormals flushed)
        modes[f"lanes{lanes}"] = partial(run_in_lanes, lambda part: single.run([output], part)[0], lanes=lanes)
    return modes


def _best(modes: dict[str, Callable[[dict[str, np.ndarray]], Any]], feeds: dict[str, np.ndarray],
          min_time: float) -> tuple[str, float, dict[str, float]]:
    seconds = {name: time_call(partial(run, feeds), min_time) for name, run in modes.items()}
    name = min(seconds, key=seconds.__getitem__)
    return name, seconds[name], seconds


def torch_lanes(model: Any, tensors: list[Any], lanes: int) -> Any:
    """PyTorch eager with the worker's lane split (one torch thread, ``lanes`` Python threads): context
    for the lane gain, not the target's baseline (the target is PyTorch eager as users run it)."""
    import torch

    from model.cpu_lanes import lane_pool

    rows = tensors[0].shape[0]
    bounds = np.linspace(0, rows, lanes + 1).astype(int)

    def lane(lo: int, hi: int) -> None:
        with torch.no_grad():  # thread-local: entered in the lane's own thread
            model(*(t[lo:hi] for t in tensors))

    def run() -> None:
        for future in [lane_pool().submit(lane, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]:
            future.result()
    return run


def on_flushed_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` on a fresh thread that flushes denormals, as the worker's lanes do: both backends are timed
    in the same floating-point mode, and this process's main thread keeps its own."""
    from concurrent.futures import ThreadPoolExecutor

    from model.cpu_lanes import flush_denormals

    with ThreadPoolExecutor(1, initializer=flush_denormals) as one:
        return one.submit(fn, *args).result()


def cpu_points(model: Any, onnx_path: Path, seq: int, batches: list[int], threads: int,
               min_time: float, traced: Path | None = None) -> list[dict[str, Any]]:
    import torch

    from model.features import featurize

    served, traced_modes = ort_modes(onnx_path, threads), ort_modes(traced, threads) if traced else {}
    names = model.spec.input_names()
    points = []
    for batch in batches:
        feeds = featurize(full_sequences(batch, seq, seed=batch), model.spec, pad_to=seq)
        tensors = [torch.from_numpy(feeds[n]) for n in names]
        o_mode, ort_s, by_mode = _best(served, feeds, min_time)
        torch_s: dict[int, float] = {}
        for n in sorted({threads, 1}):
            torch.set_num_threads(n)
            with torch.no_grad():
                torch_s[n] = time_call(partial(model, *tensors), min_time)
        t_thr = min(torch_s, key=torch_s.__getitem__)
        point: dict[str, Any] = {
                 "seq": seq, "batch": batch, "ort_ms": round(ort_s * 1000, 3), "ort_mode": o_mode,
                 "torch_ms": round(torch_s[t_thr] * 1000, 3), "torch_threads": t_thr,
                 "ort_people_per_s": round(batch / ort_s, 1),
                 "torch_people_per_s": round(batch / torch_s[t_thr], 1)}
        point["speedup"] = ratio(point["ort_people_per_s"], point["torch_people_per_s"])
        # One core each: what the graph alone buys, without the lanes.
        point["one_thread_speedup"] = ratio(batch / min(by_mode["intra1"], by_mode["lanes1"]), batch / torch_s[1])
        if threads > 1 and batch >= 2 * threads:
            torch.set_num_threads(1)
            point["torch_lanes_people_per_s"] = round(batch / time_call(torch_lanes(model, tensors, threads),
                                                                        min_time), 1)
        if traced_modes:
            t_mode, traced_s, _ = _best(traced_modes, feeds, min_time)
            point["ort_traced_people_per_s"], point["ort_traced_mode"] = round(batch / traced_s, 1), t_mode
            point["fused_vs_traced"] = ratio(point["ort_people_per_s"], point["ort_traced_people_per_s"])
        say(f"cpu seq {seq} batch {batch}: ort {point['ort_people_per_s']:.0f}/s ({o_mode}), torch "
            f"{point['torch_people_per_s']:.0f}/s ({t_thr} thr), x{point['speedup']}"
            + (f"; traced graph {point['ort_traced_people_per_s']:.0f}/s" if traced_modes else ""))
        points.append(point)
    torch.set_num_threads(threads)
    return points


def _host_run(session: Any, output: str, feeds: dict[str, np.ndarray]) -> None:
    """What the worker does per batch on a GPU: bind host arrays, run, copy the vectors back."""
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    binding.bind_output(output, "cpu")
    session.run_with_iobinding(binding)
    binding.copy_outputs_to_cpu()


def cuda_points(paths: dict[str, Path], spec: Any, seq: int, batches: list[int],
                min_time: float) -> list[dict[str, Any]]:
    import onnxruntime as ort

    from model.features import featurize

    points = []
    for precision, path in paths.items():
        session = ort_session(path, 1, cuda=True)
        output = session.get_outputs()[0].name
        for batch in batches:
            feeds = featurize(full_sequences(batch, seq, seed=batch), spec, pad_to=seq)
            device = session.io_binding()
            for name, value in feeds.items():
                on_gpu = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), "cuda", 0)
                device.bind_ortvalue_input(name, on_gpu)
            device.bind_output(output, "cuda", 0)
            dev_s = time_call(partial(session.run_with_iobinding, device), min_time)
            host_s = time_call(partial(_host_run, session, output, feeds), min_time)
            point = {"precision": precision, "seq": seq, "batch": batch, "device_ms": round(dev_s * 1000, 3),
                     "host_ms": round(host_s * 1000, 3), "device_people_per_s": round(batch / dev_s, 1),
                     "host_people_per_s": round(batch / host_s, 1)}
            say(f"cuda {precision} seq {seq} batch {batch}: {point['device_people_per_s']:.0f}/s on device, "
                f"{point['host_people_per_s']:.0f}/s from host")
            points.append(point)
    return points


def runtime_rate(registry: str, version: str, threads: int, min_time: float) -> float:
    """People/s through ``EncoderRuntime.encode`` (featurise + bucket + run), batch 256 of 50 events."""
    from model.runtime import EncoderRuntime

    runtime = EncoderRuntime.load(registry, version, use_gpu="no", threads=threads)
    seqs = full_sequences(256, runtime.spec.max_len, seed=3)
    return round(256 / time_call(lambda: runtime.encode(seqs), min_time), 1)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for seq in sorted({p["seq"] for p in report["cpu"]}):
        pts = [p for p in report["cpu"] if p["seq"] == seq]
        ax.plot([p["batch"] for p in pts], [p["ort_people_per_s"] for p in pts], "o-",
                label=f"onnxruntime CPU, seq {seq}")
        ax.plot([p["batch"] for p in pts], [p["torch_people_per_s"] for p in pts], "s--",
                label=f"PyTorch eager CPU, seq {seq}")
    for key in sorted({(p["precision"], p["seq"]) for p in report.get("cuda") or []}):
        pts = [p for p in report["cuda"] if (p["precision"], p["seq"]) == key]
        ax.plot([p["batch"] for p in pts], [p["device_people_per_s"] for p in pts], "^-",
                label=f"CUDA {key[0]} IOBinding, seq {key[1]}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (people per call)")
    ax.set_ylabel("people/s")
    gpu = report["machine"]["gpu"] or "no GPU"
    ax.set_title(f"encoder, {report['machine']['cores']} CPU cores, {gpu}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4,16,64,256,1024")
    parser.add_argument("--gpu-batches", default="1,16,256,1024,4096,16384")
    parser.add_argument("--seqs", default="50,200")
    parser.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="intra-op threads (default: the worker's, min(4, cores))")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of repeats per point")
    parser.add_argument("--out-dir", default=str(BENCH_DIR))
    parser.add_argument("--registry", default=None, help="bench model registry (default OUT_DIR/registry)")
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    gpu_batches = [int(b) for b in args.gpu_batches.split(",")]
    seqs = [int(s) for s in args.seqs.split(",")]
    if args.quick:
        batches, gpu_batches, seqs, args.min_time = [1, 256], [256, 4096], [50], 0.1
    directory = out_dir(args.out_dir, "encoder")
    registry = args.registry or str(Path(args.out_dir) / "registry")
    version = ensure_model(registry, args.quick)
    from model.fused_graph import has_fused_graph

    report: dict[str, Any] = {"bench": "encoder", "command": command("encoder", argv), "machine": machine(),
                              "model_version": version, "threads": args.threads, "quick": args.quick, "cpu": []}
    cuda_paths: dict[int, dict[str, Path]] = {}
    spec_of: dict[int, Any] = {}
    for seq in seqs:
        model, fp32, fp16 = models_for(registry, version, seq, directory)
        report["architecture"] = model.cfg.to_dict()
        spec_of[seq], cuda_paths[seq] = model.spec, {"fp32": fp32, "fp16": fp16}
        traced = traced_variant(model, seq, directory) if has_fused_graph(model) else None
        report["cpu"].extend(on_flushed_thread(cpu_points, model, fp32, seq, batches, args.threads, args.min_time,
                                               traced))
    report["runtime_people_per_s_batch256_seq50"] = runtime_rate(registry, version, args.threads, args.min_time)
    skipped = cuda_status(cuda_paths[seqs[0]]["fp32"])
    report["cuda"] = None if skipped else []
    report["cuda_skipped"] = skipped
    if skipped is None:
        for seq in seqs:
            report["cuda"].extend(cuda_points(cuda_paths[seq], spec_of[seq], seq, gpu_batches, args.min_time))
    else:
        say(f"CUDA skipped: {skipped}")
    at_256 = next((p for p in report["cpu"] if p["batch"] == 256 and p["seq"] == min(seqs)), None)
    best_gpu = max((p["device_people_per_s"] for p in report["cuda"] or []), default=None)
    report["targets"] = {"cpu_ort_vs_torch_batch256": target(at_256["speedup"] if at_256 else None, TARGET_CPU_RATIO),
                         "gpu_people_per_s": target(best_gpu, TARGET_GPU_PEOPLE_S) | (
                             {"skipped": skipped} if skipped else {"gpu": report["machine"]["gpu"]})}
    measured = [t for t in report["targets"].values() if "skipped" not in t]
    report["all_targets_met"] = all(t["met"] for t in measured)
    path = plot_path(directory, "encoder")
    _plot(report, path)
    report["plot"] = str(path)
    return emit(report)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Next-item training of the interest encoder, with validation-only epoch selection.

Objective (``model.objective``): at every position of a person's training
windows the encoder predicts the next item with a softmax cross-entropy over
candidate items (cosine x learned scale, plus a learned item bias).
Cross-entropy over many negatives is known to beat SASRec's original binary
loss with one negative by a wide margin.  Small catalogues use the full
softmax (every catalogue item is a negative, ``negatives=0``, the default up
to 50 000 items); ``negatives > 0`` switches to a sampled softmax over the
batch's own targets plus uniformly drawn items.  Targets are weighted by
their action (purchase > click > browse) times the event weight.

The best epoch is chosen on the validation target only (see
``model.evaluate``); the test target is never looked at during training.
Runs are deterministic for a seed on CPU: fixed thread count, deterministic
algorithms, and every random draw from a seeded generator.

Python API: ``train(events, registry_root, TrainConfig(...)) -> TrainResult``
(load, train, export, verify, publish); ``train_model`` for the loop alone.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.configs import DEFAULT_ACTION_WEIGHTS, NAMED_CONFIGS, TrainConfig, named_config
from model.data import Sequences, Split, refit_split
from model.encoder import EncoderConfig, InterestEncoder
from model.evaluate import EvalSet, build_eval_set, catalogue_of, vector_metrics
from model.features import FeatureSpec, hash_items
from model.objective import Ema, TrainWindows, cooccurrence_vectors, drop_items, init_item_tables
from model.objective import loss as loss_fn
from model.trained import EpochLog, Trained, item_vectors, person_vectors

__all__ = ["DEFAULT_ACTION_WEIGHTS", "NAMED_CONFIGS", "TrainConfig", "named_config", "train", "train_model"]

def setup_determinism(seed: int, threads: int | None) -> None:
    """Seed every RNG and pin the thread count so a CPU run repeats bit for bit."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads or max(1, min(2, os.cpu_count() or 1)))


def validate(
    model: InterestEncoder, spec: FeatureSpec, data: EvalSet, catalogue: list[str]
) -> dict[str, float]:
    """Validation-target metrics with the PyTorch model (for epoch selection only)."""
    return vector_metrics(
        person_vectors(model, data.histories, spec), item_vectors(model, catalogue, spec), data
    )


class EpochSelector:
    """Picks the best epoch on validation NDCG@10 only, optionally smoothed over neighbours.

    One epoch's validation NDCG on ~1k people moves by about its standard
    error from one epoch to the next, so the single highest value is often a
    noise peak.  With ``smooth`` each epoch is scored by the mean of itself
    and its two neighbours, which picks the middle of the best plateau.
    Without validation people every epoch scores 0 and the last one wins.
    """

    def __init__(self, smooth: bool = True) -> None:
        self.smooth = smooth
        self.recent: list[tuple[int, float, dict[str, float], dict[str, torch.Tensor]]] = []
        self.best_epoch, self.best_score = 0, -math.inf
        self.best_metrics: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] = {}

    def _consider(self, candidate: int, around: list[int]) -> None:
        epoch, score, metrics, state = self.recent[candidate]
        value = float(np.mean([self.recent[i][1] for i in around])) if self.smooth else score
        if value >= self.best_score:
            self.best_epoch, self.best_score = epoch, value
            self.best_metrics, self.best_state = metrics, state

    def add(self, epoch: int, metrics: dict[str, float], state: dict[str, torch.Tensor]) -> None:
        score = float(metrics.get("ndcg@10", 0.0))
        self.recent = [*self.recent[-2:], (epoch, score, metrics, copy.deepcopy(state))]
        if not self.smooth:
            self._consider(len(self.recent) - 1, [len(self.recent) - 1])
        elif len(self.recent) >= 2:  # the previous epoch now has both neighbours (or is the first)
            self._consider(len(self.recent) - 2, list(range(max(0, len(self.recent) - 3), len(self.recent))))

    def finish(self) -> None:
        """Score the last epoch (it has only a left neighbour)."""
        if self.recent and self.smooth:
            self._consider(len(self.recent) - 1, list(range(max(0, len(self.recent) - 2), len(self.recent))))


def train_model(
    people: Sequences,
    split: Split,
    cfg: TrainConfig,
    init: tuple[FeatureSpec, EncoderConfig, dict[str, torch.Tensor]] | None = None,
    log: Callable[[str], None] | None = None,
    platform: str | None = None,
) -> Trained:
    """Train (or fine-tune ``init``) and return the model restored to its best validation epoch.

    With ``platform`` (and ``split`` a :func:`model.data.platform_split`) only that platform's
    events are targets, ranked against its own catalogue; every event stays an input.

    With ``cfg.refit`` that run only chooses the epoch count: a second run from the same start
    trains that many epochs on :func:`model.data.refit_split` (validation targets included, test
    targets still held out) and its last epoch is returned, with the first run's history and
    validation numbers (the refit model has seen the validation targets, so its own say nothing).
    """
    chosen = _train_selected(people, split, cfg, init, log, platform)
    if not cfg.refit or not split.valid or chosen.best_epoch < 1:
        return chosen
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"refit: {chosen.best_epoch} epochs again with the validation targets as training targets")
    again = replace(cfg, refit=False, epochs=chosen.best_epoch, patience=chosen.best_epoch + 1, time_budget_s=None)
    refit = _train_selected(people, refit_split(split), again, init, log, platform)
    return Trained(refit.model, refit.spec, refit.enc_cfg, chosen.history, chosen.best_epoch, chosen.best_valid,
                   chosen.seconds + refit.seconds, chosen.stopped, refit_epochs=len(refit.history))


def _train_selected(
    people: Sequences,
    split: Split,
    cfg: TrainConfig,
    init: tuple[FeatureSpec, EncoderConfig, dict[str, torch.Tensor]] | None,
    log: Callable[[str], None] | None,
    platform: str | None,
) -> Trained:
    """One training run, restored to its best (smoothed) validation epoch; the last epoch without validation."""
    started = time.perf_counter()
    setup_determinism(cfg.seed, cfg.threads)
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if init is not None:
        spec, enc_cfg, state = init
        model = InterestEncoder(spec, enc_cfg)
        model.load_state_dict(state)
    else:
        spec = FeatureSpec(hash_buckets=cfg.hash_buckets, max_len=cfg.max_len)
        enc_cfg = EncoderConfig(
            cfg.width,
            cfg.layers,
            cfg.heads,
            cfg.ffn_mult,
            cfg.dim,
            cfg.dropout,
            init_scale=cfg.init_scale,
            block=cfg.block,
            item_bias=cfg.item_bias,
        )
        model = InterestEncoder(spec, enc_cfg)
    train_items = catalogue_of(split.train, platform)
    if init is None and cfg.pretrain_items:
        vectors = cooccurrence_vectors(split, train_items, enc_cfg.width, max_items=cfg.pretrain_max_items)
        if vectors is not None:
            init_item_tables(model, hash_items(train_items, spec), vectors)
    data = TrainWindows(
        split,
        spec,
        train_items,
        cfg.action_weights,
        cfg.future,
        cfg.future_decay,
        cfg.shuffle_window_s,
        cfg.all_windows,
        cfg.random_offsets,
        platform,
    )
    if len(data) == 0 or not train_items:
        where = "" if platform is None else f" with an event on platform {platform}"
        raise ValueError(f"no person has 2+ training events{where}: nothing to learn from")
    catalogue = catalogue_of(people, platform)
    valid = build_eval_set(split, catalogue, "valid")
    cat_hashes = torch.from_numpy(hash_items(train_items, spec))
    negatives = cfg.negatives
    if negatives < 0:
        negatives = 0 if len(train_items) <= cfg.full_softmax_max_items else 4096
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    ema = Ema(model, cfg.ema) if cfg.ema > 0 else None
    history: list[EpochLog] = []
    select = EpochSelector(cfg.smooth_selection)
    stopped = "epochs"
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        if cfg.shuffle_window_s is not None or cfg.random_offsets:
            data.build(rng)
        for rows in data.batches(rng, cfg.batch_size):
            inputs, targets, weights = data.batch(rows)
            if cfg.item_dropout > 0:
                inputs = drop_items(inputs, spec.n_hashes, cfg.item_dropout, gen)
            loss = loss_fn(model, inputs, targets, weights, cat_hashes, negatives, gen)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            if ema is not None:
                ema.update(model)
            total += float(loss.detach()) * len(rows)
            count += len(rows)
        metrics: dict[str, float] = {}
        live = copy.deepcopy(model.state_dict()) if ema is not None else None
        if ema is not None:
            model.load_state_dict(ema.state)
        if not valid.people or epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            metrics = validate(model, spec, valid, catalogue) if valid.people else {}
            select.add(epoch, metrics, model.state_dict())
        if live is not None:
            model.load_state_dict(live)
        seconds = time.perf_counter() - t0
        history.append(EpochLog(epoch, total / max(count, 1), metrics, seconds))
        if cfg.progress:
            shown = f"valid ndcg@10 {metrics['ndcg@10']:.4f} hr@10 {metrics['hr@10']:.4f}" if metrics else ""
            say(
                f"epoch {epoch:>3}/{cfg.epochs} loss {total / max(count, 1):.4f} {shown} "
                f"(best {select.best_score:.4f} @ {select.best_epoch}) {seconds:.1f}s"
            )
        elapsed = time.perf_counter() - started
        if epoch - select.best_epoch >= cfg.patience:
            stopped = "patience"
            break
        # With refit the budget also holds the second run: best-epoch-many epochs ~15 % longer each.
        refit_s = select.best_epoch * (elapsed / epoch) * 1.15 if cfg.refit else 0.0
        if cfg.time_budget_s is not None and elapsed + seconds * 1.5 + refit_s > cfg.time_budget_s:
            stopped = "time budget"
            break
    select.finish()
    model.load_state_dict(select.best_state)
    model.eval()
    seconds = time.perf_counter() - started
    return Trained(model, spec, enc_cfg, history, select.best_epoch, select.best_metrics, seconds, stopped)


@dataclass
class TrainResult:
    """What ``train`` did: the published version and every number worth logging."""

    version: str
    promoted: bool
    metrics: dict[str, Any]
    best_epoch: int
    epochs_run: int
    stopped: str
    train_seconds: float
    total_seconds: float
    plot: str | None
    history: list[EpochLog]

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "promoted": self.promoted,
            "metrics": self.metrics,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stopped": self.stopped,
            "train_seconds": round(self.train_seconds, 2),
            "total_seconds": round(self.total_seconds, 2),
            "plot": self.plot,
        }


def train(
    events: str | os.PathLike[str] | list[dict[str, Any]],
    registry_root: str | os.PathLike[str],
    cfg: TrainConfig | None = None,
    *,
    from_version: str | None = None,
    time_unit: str | None = None,
    out_plot: str | os.PathLike[str] | None = None,
    force: bool = False,
    promote: bool = True,
    gate_tolerance: float = 0.0,
    log: Callable[[str], None] | None = None,
    platform: str | None = None,
) -> TrainResult:
    """Load events, train (or warm-start from ``from_version``), export, verify and publish.

    ``events`` is a path (CSV / JSON lines / ``.inter``) or a list of event
    dicts (``user_id``/``person_id``, ``item_id``, ``timestamp``/``ts_ms``,
    optional ``action``, ``platform``, ``weight``).  Raises ``ModelRejected``
    when the new model's validation NDCG@10 is below the promoted one's by more
    than ``gate_tolerance`` (default 0: never worse; ``Settings.quality_gate_tolerance``)
    unless ``force``.

    ``platform`` fine-tunes the shared version ``from_version`` (default: the
    promoted shared one) on that platform's targets, with every platform's
    events as inputs, and publishes a platform version (manifest ``platform``
    and ``parent``) gated against the platform's promoted version, or the
    parent itself on the same held-out events when the platform has none yet.
    """
    from model.data import load_events, split_for
    from model.publish import load_weights, publish_trained
    from model.registry import ModelRejected, Registry, check_platform

    started = time.perf_counter()
    cfg = cfg or TrainConfig()
    people = load_events(events, time_unit)
    registry = Registry(registry_root)
    if platform is not None:
        check_platform(platform)
        from_version = from_version or registry.promoted()
        if from_version is None:
            raise ModelRejected("a platform version is fine-tuned from a shared one: give --from V or promote one")
        if registry.platform_of(from_version) is not None:
            raise ModelRejected(f"--from {from_version} is itself a platform version; give a shared one")
    split = split_for(people, platform)
    if platform is not None and not split.valid:
        raise ValueError(f"no person has 3+ events on platform {platform}: nothing to fine-tune or gate on")
    init = load_weights(registry, from_version) if from_version else None
    trained = train_model(people, split, cfg, init=init, log=log, platform=platform)
    info = {
        "config": {k: v for k, v in cfg.__dict__.items() if k not in ("progress",)},
        "from": from_version,
        "best_epoch": trained.best_epoch,
        "epochs_run": len(trained.history),
        "stopped": trained.stopped,
        "seconds": round(trained.seconds, 2),
        "best_valid_torch": trained.best_valid,
        "history": [
            {"epoch": h.epoch, "loss": round(h.loss, 5), **{k: round(v, 5) for k, v in h.valid.items()}}
            for h in trained.history
        ],
        "source": str(events) if isinstance(events, str | os.PathLike) else f"{len(events)} in-memory events",
    }
    if platform is not None:
        info["platform"] = platform
    version, metrics = publish_trained(
        trained, people, split, registry, info, force=force, promote=promote, tolerance=gate_tolerance,
        platform=platform, parent=from_version if platform is not None else None,
    )
    plot = str(registry.path(version) / "training.png")
    if out_plot is not None:
        Path(out_plot).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plot, out_plot)
        plot = str(out_plot)
    return TrainResult(
        version=version,
        promoted=promote and registry.promoted(platform) == version,
        metrics=metrics,
        best_epoch=trained.best_epoch,
        epochs_run=len(trained.history),
        stopped=trained.stopped,
        train_seconds=trained.seconds,
        total_seconds=time.perf_counter() - started,
        plot=plot,
        history=trained.history,
    )

"""``train_adapter``: one QLoRA training run on the transformers Trainer, end to end.

Loads the base through :func:`hub.models.load_base`, reads and tokenizes the
data, attaches the adapter method, trains with the stock Trainer loop
(:mod:`plugins.trainer.checkpoint`), and writes the run directory::

    <run>/adapter/      PEFT adapter (adapter_config.json + adapter_model.safetensors)
    <run>/manifest.json base fingerprint, data sha256, options, versions, metrics
    <run>/metrics.jsonl one line per training event
    <run>/loss.png      loss curve
    <run>/run.json      what a --resume must match
    <run>/checkpoints/  Trainer checkpoints (safetensors + JSON)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.errors import HubError, ValidationError
from hub.types import AdapterPayload, AdapterRef
from plugins.trainer.data import load_examples, split_eval
from plugins.trainer.distributed import rank_device, world
from plugins.trainer.manifest import (
    check_resumable,
    library_versions,
    read_run_info,
    write_json_atomic,
)
from plugins.trainer.options import TrainOptions, build_options

ADAPTER_DIR = "adapter"
MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
LOSS_PNG = "loss.png"
RUN_INFO = "run.json"
CHECKPOINTS = "checkpoints"


class TrainingInterrupted(HubError):
    """Ctrl-C during training: a checkpoint was saved; ``--resume`` continues from it."""

    exit_code = 130


@dataclass
class TrainResult:
    """What :func:`train_adapter` produced."""

    run_dir: Path
    adapter_dir: Path
    manifest: dict[str, Any]
    steps: int
    train_seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    truncated: int = 0
    stored: AdapterRef | None = None
    adapter_sha256: str = ""
    rank: int = 0
    world_size: int = 1


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` directory of a run, or ``None``."""
    ckpts = sorted(
        (p for p in (run_dir / CHECKPOINTS).glob("checkpoint-*") if p.name[11:].isdigit()),
        key=lambda p: int(p.name[11:]),
    )
    return ckpts[-1] if ckpts else None


def adapter_digest(model: Any) -> str:
    """sha256 over the trainable adapter tensors (equal on every DDP rank after training)."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if "lora_" in name:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_adapter(
    hub: Any,
    base: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    eval_data: str | Path | None = None,
    resume: bool = False,
    store: Any = None,
    team: str | None = None,
    log: Any = print,
    init_adapter: AdapterPayload | None = None,
    device: Any = None,
    **options: Any,
) -> TrainResult:
    """Train an adapter on ``base`` with ``data_path`` and write the run to ``out_dir``.

    Args:
        hub: the plugin host (quantizers, adapter methods, optimizers, ``training_event``).
        base: pre-quantized checkpoint, Hugging Face model directory or hub id.
        data_path: JSONL training data (see :mod:`plugins.trainer.data`).
        out_dir: run directory; must be new (or empty) unless ``resume``.
        name: adapter name for the manifest and the store (default: ``out_dir``'s name).
        eval_data: JSONL for eval loss; default: ``eval_fraction`` of ``data_path``.
        resume: continue from the newest checkpoint in ``out_dir``; refused (naming what
            differs) when base, data or options differ from the original run.
        store: a storage backend; when given (with ``team``) the adapter is pushed as a new version.
        team: the acting team for ``store``.
        log: where progress lines go (``print``; ``None`` for silence).
        init_adapter: start from this adapter's LoRA weights (federated rounds: the
            previous round's merge); recorded in the manifest as ``init_adapter``.
        device: ``auto`` (``None``), ``cpu``, ``cuda`` or ``cuda:N``; under torchrun a
            CUDA device is each rank's own. On CUDA the Trainer runs in the compute
            dtype (bf16 autocast) and the peak memory is ``torch.cuda.max_memory_allocated``.
        **options: :class:`plugins.trainer.options.TrainOptions` fields, or ``options=TrainOptions``.

    Returns:
        :class:`TrainResult`. Raises :class:`TrainingInterrupted` on Ctrl-C after saving a checkpoint.
    """
    opts = options.pop("options", None) or build_options(flags=options)
    if not isinstance(opts, TrainOptions):
        raise ValidationError("options= must be a TrainOptions")
    opts.validate()
    say = log or (lambda *_: None)
    rank, world_size = world()
    target = rank_device(device)  # a bad or missing device fails here, before any reading
    run_dir = Path(out_dir)
    name = name or run_dir.name

    import torch

    threads_before = torch.get_num_threads()
    if opts.threads:
        # fewer threads than cores is faster when other processes share them (no spin-waiting)
        torch.set_num_threads(opts.threads)
    try:
        return _train(
            hub,
            opts,
            base,
            data_path,
            run_dir,
            name,
            eval_data,
            resume,
            store,
            team,
            say,
            rank,
            world_size,
            init_adapter,
            target,
        )
    finally:
        torch.set_num_threads(threads_before)


def _train(
    hub: Any,
    opts: TrainOptions,
    base: Any,
    data_path: Any,
    run_dir: Path,
    name: str,
    eval_data: Any,
    resume: bool,
    store: Any,
    team: str | None,
    say: Any,
    rank: int,
    world_size: int,
    init_adapter: AdapterPayload | None,
    device: Any,
) -> TrainResult:
    """The body of :func:`train_adapter` (which sets and restores the thread count)."""
    import torch
    import transformers
    from transformers import TrainingArguments

    from hub.models import load_base
    from hub.optim import describe_optimizer
    from plugins.trainer.batches import make_collator, make_dataset
    from plugins.trainer.checkpoint import make_trainer_class
    from plugins.trainer.events import make_event_callback, plot_loss
    from plugins.trainer.init_adapter import adapter_weights_sha256, load_init_adapter
    from plugins.trainer.memory import PeakMemory, format_account, run_account, trainer_precision

    writer = rank == 0
    transformers.logging.set_verbosity_error()
    method = hub.adapters[opts.adapter_method]
    factory = hub.optimizers[opts.optimizer]

    if device.type == "cuda":
        torch.cuda.set_device(device)  # the Trainer puts each batch on the current device
    peak = PeakMemory(device)
    loaded = load_base(hub, base, device=device)
    data = load_examples(
        Path(data_path),
        loaded.tokenizer,
        max_length=opts.max_length,
        strict=opts.strict,
        completion_only=opts.completion_only,
    )
    if data.truncated:
        say(
            f"truncated {data.truncated} of {data.truncated + len(data.examples)} rows to "
            f"max_length {opts.max_length} tokens ({data.dropped} dropped: nothing left to learn)"
        )
    if not data.examples:
        raise ValidationError(f"{data_path}: no usable rows after truncation: raise max_length")
    if eval_data:
        ev = load_examples(
            Path(eval_data),
            loaded.tokenizer,
            max_length=opts.max_length,
            strict=opts.strict,
            completion_only=opts.completion_only,
        )
        train_rows, eval_rows = data.examples, ev.examples
    else:
        train_rows, eval_rows = split_eval(data, opts.eval_fraction, opts.seed)

    run_info = {
        "name": name,
        "base": str(base),
        "base_fingerprint": loaded.fingerprint,
        "base_quantizer": loaded.method,
        "data_sha256": data.sha256,
        "options": opts.to_dict(),
        "init_adapter_sha256": adapter_weights_sha256(init_adapter) if init_adapter else None,
    }
    checkpoint = None
    if resume:
        previous = read_run_info(run_dir / RUN_INFO)
        check_resumable(previous, run_info)
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise ValidationError(
                f"{run_dir} has no checkpoint to resume from: train without --resume"
            )
        say(f"resuming from {checkpoint}")
    elif writer:  # other ranks may see rank 0's fresh directory: only rank 0 checks and writes
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ValidationError(
                f"run directory {run_dir} is not empty: pick a new one or --resume"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / RUN_INFO, run_info)

    transformers.set_seed(opts.seed)
    # no KV cache while training: it is useless there, and with one transformers ignores the
    # position ids that keep packed examples apart
    loaded.model.config.use_cache = False
    precision = trainer_precision(loaded.model, loaded.device)  # before attach upcasts norms
    model = method.attach(loaded.model, opts.lora_options())
    init_info = load_init_adapter(model, init_adapter, opts) if init_adapter else None
    events = make_event_callback(
        lambda e: hub.pm.hook.training_event(event=e), run_dir / METRICS, writer
    )
    use_cpu = loaded.device.type == "cpu"
    args = TrainingArguments(
        output_dir=str(run_dir / CHECKPOINTS),
        max_steps=opts.max_steps if opts.max_steps > 0 else -1,
        num_train_epochs=opts.epochs,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum,
        learning_rate=opts.learning_rate,
        weight_decay=opts.weight_decay,
        lr_scheduler_type=opts.lr_scheduler,
        warmup_steps=opts.warmup_ratio,
        max_grad_norm=opts.max_grad_norm,
        logging_steps=opts.logging_steps or 10,
        eval_strategy="steps" if (opts.eval_steps and eval_rows) else "no",
        eval_steps=opts.eval_steps or None,
        save_strategy="steps" if opts.save_steps else "no",
        save_steps=opts.save_steps or 500,
        seed=opts.seed,
        data_seed=opts.seed,
        report_to=[],
        disable_tqdm=not (opts.progress and writer),
        use_cpu=use_cpu,
        **precision,
        ddp_backend=("gloo" if use_cpu else "nccl") if world_size > 1 else None,
        ddp_find_unused_parameters=False,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        save_only_model=False,
    )
    collator = make_collator(loaded.tokenizer, packing=opts.packing, max_length=opts.max_length)
    trainer = make_trainer_class()(
        model=model,
        args=args,
        train_dataset=make_dataset(train_rows),
        eval_dataset=make_dataset(eval_rows) if eval_rows else None,
        data_collator=collator,
        callbacks=[events],
        optimizer_factory=factory,
    )
    if not (opts.progress and writer):
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # no raw log dicts on stdout when quiet
    started = time.monotonic()
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        trainer._save_checkpoint(trainer.model, trial=None)
        saved = latest_checkpoint(run_dir)
        raise TrainingInterrupted(
            f"interrupted at step {trainer.state.global_step}: checkpoint saved to {saved}; "
            f"continue with --resume"
        ) from None
    seconds = time.monotonic() - started
    # the collator also ran for eval batches below, so read the training counts now
    tokens, useful, largest = collator.tokens, collator.useful_tokens, collator.largest_shape
    metrics: dict[str, Any] = {
        "train_loss": events.last.get("loss"),
        "steps": trainer.state.global_step,
        "tokens": tokens,
        "useful_tokens": useful,
        "useful_tokens_per_s": round(useful / seconds, 1) if seconds else None,
    }
    if eval_rows:
        metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])
    events.finish(trainer.state.global_step)
    opt_info = describe_optimizer(factory, trainer.optimizer)
    account = run_account(
        model, trainer.optimizer, opts, peak, largest, mixed=bool(precision), opt_info=opt_info
    )
    result = TrainResult(
        run_dir=run_dir,
        adapter_dir=run_dir / ADAPTER_DIR,
        manifest={},
        steps=trainer.state.global_step,
        train_seconds=seconds,
        metrics=metrics,
        memory=account,
        optimizer=opt_info,
        truncated=data.truncated,
        adapter_sha256=adapter_digest(model),
        rank=rank,
        world_size=world_size,
    )
    if not writer:
        return result
    say(format_account(account))
    adapter_dir = run_dir / ADAPTER_DIR
    if adapter_dir.exists():  # a resumed run that had finished before
        import shutil

        shutil.rmtree(adapter_dir)
    method.save(model, adapter_dir)
    manifest = {
        "name": name,
        "adapter_method": opts.adapter_method,
        "base": str(base),
        "base_fingerprint": loaded.fingerprint,
        "base_quantizer": loaded.method,
        "data": {
            "path": str(data_path),
            "sha256": data.sha256,
            "rows": len(data.examples),
            "train_rows": len(train_rows),
            "eval_rows": len(eval_rows),
            "truncated": data.truncated,
            "formats": data.formats,
        },
        "config": opts.to_dict(),
        "frozen_a": {"seed": opts.a_seed} if opts.freeze_a else None,
        "init_adapter": init_info,
        "optimizer": opt_info,
        "metrics": {**metrics, "train_seconds": round(seconds, 2)},
        "memory": account,
        "versions": library_versions(),
        "world_size": world_size,
    }
    write_json_atomic(run_dir / MANIFEST, manifest)
    ckpts = run_dir / CHECKPOINTS
    if ckpts.is_dir() and not any(ckpts.iterdir()):
        ckpts.rmdir()  # the Trainer creates it up front; keep the run tidy when nothing was saved
    plot_loss(run_dir / METRICS, run_dir / LOSS_PNG, f"{name}: loss")
    result.manifest = manifest
    if store is not None:
        payload = AdapterPayload.from_dir(adapter_dir, name)
        payload.manifest = manifest
        result.stored = store.push(payload, team=team, metadata=manifest)
    return result

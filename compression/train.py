"""Training and evaluation loops: seeded, CPU or CUDA (bf16 autocast on CUDA), masks respected.

Pruning masks and quantization codes live in weight parametrizations, so the same loop serves
baseline training, masked retraining and codebook fine-tuning: what it optimises is whatever
`parameters` it is given.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from compression.config import TrainConfig
from compression.data import Dataset, Split, batches
from compression.errors import InvalidConfigError, TrainingDivergedError

Progress = Callable[[float, str], None]  # (fraction done 0..1, message)
# Periodic messages begin with this (every 20 steps); a consumer that has to thin out its
# events may drop these, never the others (a pruning round kept or undone, a stage done).
STEP_MESSAGE = "step "


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when there is a GPU), `cpu`, `cuda` or `cuda:N`, checked against the machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidConfigError(f"device {name!r} is not cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidConfigError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """bf16 mixed precision on CUDA (no loss scaling needed); plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    *,
    device: torch.device,
    seed: int = 0,
    parameters: Iterable[nn.Parameter] | None = None,
    teacher: nn.Module | None = None,
    progress: Progress | None = None,
    before_step: Callable[[float], None] | None = None,
) -> list[float]:
    """Train in place; returns the mean loss of each epoch. With a `teacher`, the loss adds
    distillation towards its soft predictions (temperature 4). `before_step(fraction)` is
    called before each step with the fraction of the steps done (gradual pruning's hook)."""
    params = [
        p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad
    ]
    steps_per_epoch = math.ceil(len(dataset.train) / config.batch_size)
    total_steps = max(1, round(config.epochs * steps_per_epoch))
    if not params or config.epochs == 0:
        return []
    optimizer: torch.optim.Optimizer
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=True,
        )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    losses: list[float] = []
    step = 0
    started = time.perf_counter()
    while step < total_steps:
        epoch_loss, epoch_batches = 0.0, 0
        for x, y in _epoch(dataset, config, device, generator):
            if before_step is not None:
                before_step(step / total_steps)
            with autocast(device):
                logits = model(x)  # (batch, classes)
                if step == 0:
                    _check_outputs(logits, dataset)
                loss = F.cross_entropy(logits.float(), y)
                if teacher is not None:
                    with torch.no_grad():
                        soft = teacher(x).float()
                    # Hinton's even weighting: with the plain sum, a freshly pruned LeNet-5
                    # (distillation loss 5.7, cross-entropy 0.19) went to NaN in 9 steps at lr 0.02.
                    loss = (loss + _distillation(logits.float(), soft)) / 2
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    f"training diverged: loss {value} at step {step + 1} of {total_steps} "
                    f"(lr {config.lr}); try a lower learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            epoch_loss += value
            epoch_batches += 1
            step += 1
            if progress is not None and (step % 20 == 0 or step == total_steps):
                elapsed = time.perf_counter() - started
                progress(
                    step / total_steps,
                    f"{STEP_MESSAGE}{step}/{total_steps}, loss {value:.3f}, {elapsed:.0f} s",
                )
            if step >= total_steps:
                break
        losses.append(epoch_loss / max(epoch_batches, 1))
    model.eval()
    return losses


def _epoch(
    dataset: Dataset, config: TrainConfig, device: torch.device, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    return batches(
        dataset,
        dataset.train,
        batch_size=config.batch_size,
        device=device,
        shuffle=True,
        augment=config.augment,
        generator=generator,
    )


def _distillation(
    logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    soft_targets = F.softmax(teacher_logits / temperature, dim=1)
    log_probs = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(log_probs, soft_targets, reduction="batchmean") * temperature**2


@torch.no_grad()
def predictions_correct(
    model: nn.Module,
    dataset: Dataset,
    split: Split,
    *,
    device: torch.device,
    batch_size: int = 512,
    limit: int | None = None,
) -> torch.Tensor:
    """Per image of `split` (its first `limit` when given), whether the top-1 prediction is
    right: (n,) bool on the CPU, what paired comparisons are made of."""
    model.to(device).eval()
    if limit is not None and limit < len(split):
        split = Split(split.x[:limit], split.y[:limit])
    verdicts = []
    for index, (x, y) in enumerate(batches(dataset, split, batch_size=batch_size, device=device)):
        with autocast(device):
            logits = model(x)  # (batch, classes)
        if index == 0:
            _check_outputs(logits, dataset)
        verdicts.append((logits.argmax(1) == y).cpu())  # (batch,)
    return torch.cat(verdicts) if verdicts else torch.zeros(0, dtype=torch.bool)


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    split: Split,
    *,
    device: torch.device,
    batch_size: int = 512,
    limit: int | None = None,
) -> float:
    """Top-1 accuracy (0..1) on `split` (its first `limit` samples when given)."""
    correct = predictions_correct(
        model, dataset, split, device=device, batch_size=batch_size, limit=limit
    )
    return int(correct.sum()) / max(len(correct), 1)


def _check_outputs(logits: torch.Tensor, dataset: Dataset) -> None:
    """A model with fewer outputs than the data has classes cannot learn or score the rest."""
    outputs = logits.shape[-1]
    if outputs < dataset.num_classes:
        raise InvalidConfigError(
            f"the model has {outputs} outputs, but data set '{dataset.name}' has "
            f"{dataset.num_classes} classes: num_classes must be at least {dataset.num_classes}"
        )

"""Codebook fine-tuning: train the centroids of quantized layers, codes and masks fixed.

A centroid's gradient is the average of its members' weight gradients (DESIGN.md section 7),
so a centroid shared by 10,000 weights moves no faster than one shared by ten. At the end the
codebooks, and with `scope="all"` the biases and norm parameters too, are rounded to float16,
the precision the `.pqz` file stores them in, so the saved model is exactly the fine-tuned one.
"""

from __future__ import annotations

import torch
from torch import nn

from compression.config import Augment, FinetuneConfig, TrainConfig
from compression.data import Dataset
from compression.pq import ProductQuantized
from compression.prune import original_of, parametrizations_of, prunable_layers
from compression.train import Progress, train


def codebooks(model: nn.Module) -> list[tuple[nn.Parameter, ProductQuantized]]:
    """The trainable codebook of every quantized layer, with its quantizer."""
    found = []
    for _, module, _ in prunable_layers(model):
        for parametrization in parametrizations_of(module) or ():
            if isinstance(parametrization, ProductQuantized):
                codebook = original_of(module)
                assert isinstance(codebook, nn.Parameter)
                found.append((codebook, parametrization))
    return found


def finetune(
    model: nn.Module,
    dataset: Dataset,
    config: FinetuneConfig,
    *,
    device: torch.device,
    seed: int = 0,
    teacher: nn.Module | None = None,
    progress: Progress | None = None,
    augment: Augment = "auto",
) -> list[float]:
    """Fine-tune in place (batches augmented as `augment` says); returns each epoch's mean loss."""
    pairs = codebooks(model)
    handles = []
    for codebook, quantizer in pairs:
        members = torch.bincount(quantizer.codes, minlength=codebook.shape[0]).clamp(min=1)
        scale = (1.0 / members.to(codebook.dtype)).unsqueeze(1).to(codebook.device)  # (k, 1)
        handles.append(codebook.register_hook(lambda grad, scale=scale: grad * scale))
    trained: list[nn.Parameter] = [codebook for codebook, _ in pairs]
    rounded = list(trained)
    if config.scope == "all":
        known = {id(p) for p in trained}
        trained += [p for p in model.parameters() if id(p) not in known]
        # Biases and norms: float16 halves their bytes in the file; full weight matrices left
        # unquantized keep the precision `fallback_dtype` asked for.
        rounded += [p for p in trained if id(p) not in known and p.ndim <= 1]
    try:
        return train(
            model,
            dataset,
            TrainConfig(
                epochs=config.epochs,
                lr=config.lr,
                batch_size=config.batch_size,
                optimizer="adam",
                weight_decay=0.0,
                augment=augment,
            ),
            device=device,
            seed=seed,
            parameters=trained,
            teacher=teacher if config.distill else None,
            progress=progress,
        )
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for parameter in rounded:
                parameter.copy_(parameter.to(torch.float16).to(parameter.dtype))

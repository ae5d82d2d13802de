"""The job's progress bar: each stage's share follows the work the spec asks of it."""

from __future__ import annotations

import pytest

from compression import CompressionSpec
from compression.config import FinetuneConfig, PruneConfig
from worker.pipeline import STAGE_SHARES, stage_shares

ORDER = list(STAGE_SHARES)


@pytest.mark.parametrize(
    ("spec", "with_data"),
    [
        (CompressionSpec(), True),
        (CompressionSpec(), False),
        (CompressionSpec(prune=None), False),
        (CompressionSpec(prune=None, finetune=FinetuneConfig(epochs=0)), True),
        (CompressionSpec(prune=PruneConfig(sparsity=0.5, retrain_epochs=0)), True),
        (CompressionSpec(finetune=FinetuneConfig(layerwise_epochs=2)), True),
    ],
)
def test_shares_cover_the_job_in_stage_order(spec: CompressionSpec, with_data: bool) -> None:
    shares = stage_shares(spec, 4, with_data)
    assert list(shares) == ORDER  # the recorder sums the shares before a stage, in this order
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["validate"] == STAGE_SHARES["validate"]  # validation ran on the old shares
    assert all(share >= 0 for share in shares.values())
    assert shares["quantize"] > 0


def test_layerwise_training_gives_the_quantize_stage_its_weight() -> None:
    at_once = stage_shares(CompressionSpec(finetune=FinetuneConfig(layerwise_epochs=0)), 4, True)
    layerwise = stage_shares(CompressionSpec(finetune=FinetuneConfig(layerwise_epochs=2)), 4, True)
    # All layers at once: 12 rounds of 3 epochs and a scan each, 2 fine-tuning epochs, k-means.
    assert at_once["prune"] > at_once["finetune"] > at_once["quantize"]
    # Layer-wise: 3 training runs of 2 epochs between 4 layers, more than fine-tuning's 2.
    assert layerwise["quantize"] > layerwise["finetune"]
    assert layerwise["quantize"] > 5 * at_once["quantize"]


def test_post_training_leaves_nothing_to_stages_that_do_not_run() -> None:
    shares = stage_shares(CompressionSpec(), 4, False)
    assert shares["baseline"] == shares["finetune"] == 0.0
    assert shares["quantize"] > shares["prune"] > 0
    assert stage_shares(CompressionSpec(prune=None), 4, False)["prune"] == 0.0

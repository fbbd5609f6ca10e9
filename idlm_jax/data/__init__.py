"""Data layer: tokenizers, document sources, cached row arrays and the grain input pipeline.

Numpy and grain (no JAX). tensorflow_datasets is imported lazily, and only by sources.py for
data.source="tfds_lm1b". The shipped files in data/assets (vocabularies, public-domain
corpus, demo-bpe-2048.json, LICENSES.md) are rebuilt with `python -m idlm_jax.data.build_assets`
(`--check` verifies that the shipped files are up to date).
"""

from idlm_jax.data.pipeline import (EvalSplit, TokenRows, TrainIterator, get_datasets,
                                    load_split, unigram_baseline)
from idlm_jax.data.sources import DataNotFoundError, lm1b_detokenize
from idlm_jax.data.tokenizers import SHIPPED_TOKENIZERS, Tokenizer, get_tokenizer

__all__ = [
    "DataNotFoundError", "EvalSplit", "SHIPPED_TOKENIZERS", "TokenRows", "Tokenizer",
    "TrainIterator", "get_datasets", "get_tokenizer", "lm1b_detokenize", "load_split",
    "unigram_baseline",
]

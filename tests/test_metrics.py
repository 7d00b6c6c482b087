"""Definition tests: hand-built vocabularies whose similarities, ranks, top-k lists,
overlaps and anisotropies are known by hand (SPEC "Metrics")."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from tokentrail.engine.metrics import anisotropy, overlap, rank_in_vocab, similarity, similarity_from_dots, top_k

R2 = math.sqrt(2.0)

# A hand-built vocabulary of five 2-d rows and one query r = (1, 0).
VOCAB = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [-1.0, 0.0]])
QUERY = torch.tensor([[1.0, 0.0]])
COSINE = [1.0, 0.0, 1 / R2, 1.0, -1.0]
EUCLIDEAN = [0.0, -R2, -1.0, -1.0, -2.0]  # s = -||r - R[v]||


# ---- similarity ------------------------------------------------------------------------
def test_cosine_by_hand():
    assert_close(similarity(QUERY, VOCAB, "cosine"), torch.tensor([COSINE], dtype=torch.float64), rtol=0, atol=1e-15)


def test_euclidean_is_minus_distance():
    assert_close(
        similarity(QUERY, VOCAB, "euclidean"), torch.tensor([EUCLIDEAN], dtype=torch.float64), rtol=0, atol=1e-15
    )
    assert similarity(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]]), "euclidean").item() == -5.0


def test_cosine_with_zero_vector_is_zero():
    s = similarity(torch.zeros(1, 2), VOCAB, "cosine")
    assert torch.equal(s, torch.zeros(1, 5, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["cosine", "euclidean"])
def test_similarity_from_dots_matches_definition(kind):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 16, generator=g, dtype=torch.float64)
    b = torch.randn(11, 16, generator=g, dtype=torch.float64)
    b[3] = 0  # a zero row: cosine 0 by convention
    b[4] = a[2]  # an identical pair: euclidean exactly 0, cosine 1
    got = similarity_from_dots(a @ b.T, a.pow(2).sum(-1), b.pow(2).sum(-1), kind)
    assert_close(got, similarity(a, b, kind), rtol=1e-12, atol=1e-12)
    assert got[2, 4].item() == pytest.approx(1.0 if kind == "cosine" else 0.0, abs=1e-12)
    if kind == "cosine":
        assert torch.equal(got[:, 3], torch.zeros(7, dtype=torch.float64))


def test_similarity_from_dots_on_hand_vocab():
    dots = QUERY @ VOCAB.T
    cos = similarity_from_dots(dots, QUERY.pow(2).sum(-1), VOCAB.pow(2).sum(-1), "cosine")
    euc = similarity_from_dots(dots, QUERY.pow(2).sum(-1), VOCAB.pow(2).sum(-1), "euclidean")
    assert_close(cos, torch.tensor([COSINE]), rtol=0, atol=1e-7)
    assert_close(euc, torch.tensor([EUCLIDEAN]), rtol=0, atol=1e-7)


def test_euclidean_of_identical_vectors_clamps_rounding_to_zero():
    # |a|^2 - 2 a.b + |b|^2 can round below 0 for a == b; the distance must be exactly 0
    a = torch.tensor([[0.1, 0.2, 0.3]])
    dots = torch.tensor([[a.pow(2).sum() + 1e-7]])  # a rounding error in the dot product
    s = similarity_from_dots(dots, a.pow(2).sum(-1), a.pow(2).sum(-1), "euclidean")
    assert s.item() == 0.0


@pytest.mark.parametrize(
    "fn",
    [
        lambda k: similarity(QUERY, VOCAB, k),
        lambda k: similarity_from_dots(QUERY @ VOCAB.T, torch.ones(1), torch.ones(5), k),
        lambda k: anisotropy(VOCAB, k),
    ],
)
def test_unknown_similarity_is_refused(fn):
    with pytest.raises(ValueError, match="unknown similarity"):
        fn("manhattan")


# ---- rank --------------------------------------------------------------------------------
def test_rank_counts_strictly_greater_ties_favour_the_token():
    sims = torch.tensor([[0.9, 0.5, 0.9, 0.95, 0.1]] * 5)
    own = torch.tensor([0, 2, 3, 4, 1])
    # id 0 and id 2 tie at 0.9: neither counts against the other
    assert rank_in_vocab(sims, own).tolist() == [1, 1, 0, 4, 3]
    assert rank_in_vocab(sims, own).dtype == torch.int64


def test_rank_on_hand_vocab():
    cos = similarity(QUERY, VOCAB, "cosine").expand(5, -1)
    euc = similarity(QUERY, VOCAB, "euclidean").expand(5, -1)
    own = torch.arange(5)
    # cosine [1, 0, .71, 1, -1]: ids 0 and 3 tie at 1 -> both rank 0
    assert rank_in_vocab(cos, own).tolist() == [0, 3, 2, 0, 4]
    # euclidean [0, -1.41, -1, -1, -2]: ids 2 and 3 tie -> both rank 1
    assert rank_in_vocab(euc, own).tolist() == [0, 3, 1, 1, 4]


def test_rank_zero_when_all_equal():
    assert rank_in_vocab(torch.zeros(3, 8), torch.tensor([0, 4, 7])).tolist() == [0, 0, 0]


# ---- top-k ---------------------------------------------------------------------------------
ROW = [0.5, 0.9, 0.7, 0.9, 0.7, 0.7, 0.1]


@pytest.mark.parametrize(
    "k, ids",
    [
        (1, [1]),
        (2, [1, 3]),
        (3, [1, 3, 2]),  # the 0.7 tie (ids 2, 4, 5) straddles k: the lower id wins
        (4, [1, 3, 2, 4]),
        (5, [1, 3, 2, 4, 5]),
        (7, [1, 3, 2, 4, 5, 0, 6]),
        (50, [1, 3, 2, 4, 5, 0, 6]),  # k > V is cut to V
    ],
)
def test_top_k_ties_lower_id_first(k, ids):
    got_ids, got_sims = top_k(torch.tensor([ROW], dtype=torch.float64), k)
    assert got_ids.tolist() == [ids]
    assert got_sims.tolist() == [[ROW[i] for i in ids]]
    assert got_ids.dtype == torch.int64


def test_top_k_on_hand_vocab():
    cos = similarity(QUERY, VOCAB, "cosine")
    euc = similarity(QUERY, VOCAB, "euclidean")
    assert top_k(cos, 2)[0].tolist() == [[0, 3]]
    assert top_k(cos, 3)[0].tolist() == [[0, 3, 2]]
    assert top_k(euc, 2)[0].tolist() == [[0, 2]]  # ids 2 and 3 tie across the boundary
    assert top_k(euc, 5)[0].tolist() == [[0, 2, 3, 1, 4]]


def test_top_k_ties_in_long_rows_and_many_queries():
    # long rows where torch.topk is free to return any of the tied ids
    V = 3000
    sims = torch.zeros(4, V)
    sims[0, [2999, 1500, 7]] = 1.0  # three-way tie at the top, k = 2 cuts it
    sims[1, :] = 0.25  # everything ties: the first k ids
    sims[2, [10, 20]] = 0.5
    sims[2, [2500, 30, 900]] = 0.4  # k = 4 takes 10, 20 then the lowest two of the 0.4s
    sims[3] = -torch.arange(V, dtype=torch.float32)  # strictly ordered, no tie
    ids, vals = top_k(sims, 4)
    assert ids[0].tolist()[:3] == [7, 1500, 2999] and ids[0, 3].item() == 0
    assert ids[1].tolist() == [0, 1, 2, 3]
    assert ids[2].tolist() == [10, 20, 30, 900]
    assert ids[3].tolist() == [0, 1, 2, 3]
    assert vals[2].tolist() == pytest.approx([0.5, 0.5, 0.4, 0.4])
    assert top_k(sims, 2)[0][0].tolist() == [7, 1500]


def test_top_k_reversed_ties_are_reordered():
    # a tie inside the kept k (not at its boundary) must also come out in id order
    sims = torch.tensor([[0.0, 0.8, 0.8, 0.8, 0.9, 0.2]])
    assert top_k(sims, 4)[0].tolist() == [[4, 1, 2, 3]]


# ---- overlap ---------------------------------------------------------------------------------
def test_overlap_counts_shared_ids():
    a = torch.tensor([[1, 2, 3], [5, 6, 7]])
    b = torch.tensor([[3, 4, 1], [8, 9, 10]])
    assert overlap(a, b).tolist() == [2, 0]
    assert overlap(a, a).tolist() == [3, 3]
    # any batch shape, order inside a set does not matter
    x = torch.tensor([[[0, 1], [2, 3]], [[4, 5], [6, 7]]])
    y = torch.tensor([[[1, 0], [3, 9]], [[9, 8], [7, 6]]])
    assert overlap(x, y).tolist() == [[2, 1], [0, 2]]


def test_overlap_of_large_k_in_bounded_memory():
    # k = 20000 on three cells: a (k x k) comparison would need 1.2 GB; run under an
    # address-space cap 300 MB above what the process already has
    code = """
import resource, torch
from tokentrail.engine.metrics import overlap
vm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize:')][0] * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (300 << 20), resource.RLIM_INFINITY))
g = torch.Generator().manual_seed(0)
a = torch.stack([torch.randperm(50000, generator=g)[:20000] for _ in range(3)])
b = torch.stack([torch.randperm(50000, generator=g)[:20000] for _ in range(3)])
b[1] = a[1].flip(0)  # the same set in another order
b[2, :5000] = a[2, 10000:15000]  # at least these 5000 shared
want = [len(set(a[i].tolist()) & set(b[i].tolist())) for i in range(3)]
got = overlap(a, b).tolist()
assert got == want and got[1] == 20000 and got[2] >= 5000, (got, want)
print("ok")
"""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_overlap_at_k_of_hand_vocab_between_two_queries():
    # cos((1,0), rows) = [1, 0, .71, 1, -1]   -> top-3 = [0, 3, 2]
    # cos((1,1), rows) = [.71, .71, 1, .71, -.71] -> top-3 = [2, 0, 1] (three-way tie, lowest ids)
    q = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    ids, _ = top_k(similarity(q, VOCAB, "cosine"), 3)
    assert ids.tolist() == [[0, 3, 2], [2, 0, 1]]
    assert overlap(ids[1], ids[0]).item() == 2


# ---- anisotropy --------------------------------------------------------------------------------
def test_anisotropy_mean_over_distinct_pairs():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # cosine pairs: (0,1) 0, (0,2) 1/sqrt2, (1,2) 1/sqrt2
    assert anisotropy(v, "cosine").item() == pytest.approx(2 / R2 / 3, abs=1e-7)
    # euclidean pairs: sqrt2, 1, 1
    assert anisotropy(v, "euclidean").item() == pytest.approx(-(R2 + 2) / 3, abs=1e-6)


def test_anisotropy_excludes_self_pairs():
    v = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert anisotropy(v, "cosine").item() == pytest.approx(-1.0)  # with the diagonal it would be 0
    assert anisotropy(v, "euclidean").item() == pytest.approx(-2.0)  # with it, -1


def test_anisotropy_in_blocks_of_rows_is_the_mean_over_every_distinct_pair(monkeypatch):
    """Blocks of 3 rows of an 8 x 8 matrix (one short block, self pairs on every block's
    own diagonal) against the mean written pair by pair."""
    monkeypatch.setattr("tokentrail.engine.metrics.PAIR_BLOCK", 24)
    v = torch.randn(2, 8, 5, generator=torch.Generator().manual_seed(3))
    for kind, pair in (
        ("cosine", lambda a, b: a @ b / (a.norm() * b.norm())),
        ("euclidean", lambda a, b: -(a - b).norm()),
    ):
        want = [sum(pair(m[i].double(), m[j].double()) for i in range(8) for j in range(8) if i != j) / 56 for m in v]
        assert anisotropy(v, kind).tolist() == pytest.approx([float(w) for w in want], abs=1e-6)


def test_anisotropy_batches_and_single_token():
    v = torch.stack([torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]])])
    assert anisotropy(v, "cosine").tolist() == pytest.approx([1.0, 0.0])
    assert anisotropy(v, "cosine").shape == (2,)
    single = anisotropy(torch.ones(3, 1, 4), "cosine")
    assert single.shape == (3,) and torch.isnan(single).all()


# ---- margin: top-1 similarity minus own similarity ------------------------------------------
def test_margin_by_hand():
    """Query (1, 0) against VOCAB (cosine 1, 0, 1/√2, 1, -1): the nearest row's similarity is 1,
    so own row 2 has margin 1 - 1/√2, row 1 margin 1, row 4 margin 2; own row 0 ties with
    row 3 at 1 and is its own nearest (ties favour the token): margin 0."""
    import numpy as np

    from tokentrail.engine.cells import CELL_METRICS, Cells

    own = torch.tensor([2, 1, 4, 0])
    sims = similarity(QUERY.expand(4, 2), VOCAB, "cosine")  # (4, 5)
    _, top = top_k(sims, 1)
    cells = Cells(
        own_sim=sims.gather(1, own[:, None])[:, 0].numpy(),
        rank=rank_in_vocab(sims, own).numpy(),
        overlap=np.zeros(4),
        anisotropy=np.zeros(()),
        overlap_k=1,
        top_sim=top[:, 0].numpy(),
    )
    margin = CELL_METRICS["margin"].compute(cells)
    np.testing.assert_allclose(margin, [1 - 1 / R2, 1.0, 2.0, 0.0], rtol=0, atol=1e-15)
    assert margin[3] == 0.0 and cells.rank.tolist() == [2, 3, 4, 0]

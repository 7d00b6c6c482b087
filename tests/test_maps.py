"""Trajectory maps (PCA exact, t-SNE, UMAP optional) and the CLI's --map, --correct and rogue note."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from tokentrail.cli.commands import app
from tokentrail.present.maps import pca_2d, project, trajectory_map
from tokentrail.spec.errors import InputError

TEXT = "time flies like an arrow . fruit flies like a banana"


def _up_to_sign(a: np.ndarray, b: np.ndarray) -> None:
    for j in range(a.shape[1]):
        s = 1.0 if np.dot(a[:, j], b[:, j]) >= 0 else -1.0
        np.testing.assert_allclose(a[:, j], s * b[:, j], atol=1e-9)


def test_pca_equals_the_eigenvectors_of_the_covariance_up_to_sign():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 6)) * np.array([5, 3, 1, 1, 0.5, 0.1]) + 7
    xc = x - x.mean(0)
    vals, vecs = np.linalg.eigh(xc.T @ xc)  # an independent route to the principal axes
    expected = xc @ vecs[:, np.argsort(vals)[::-1][:2]]
    _up_to_sign(pca_2d(x), expected)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    _up_to_sign(pca_2d(x), xc @ vt[:2].T)


def test_pca_by_hand_points_on_a_line():
    x = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])  # mean (1, 1); axis (1, 1)/sqrt 2
    got = pca_2d(x)
    _up_to_sign(got[:, :1], np.array([[-np.sqrt(2)], [0.0], [np.sqrt(2)]]))
    np.testing.assert_allclose(got[:, 1], 0.0, atol=1e-12)


def test_trajectory_map_draws_every_token_path_with_faint_neighbours(loaded_tiny):
    run = loaded_tiny.run(TEXT)
    L, n = loaded_tiny.adapter.n_layers, run.n_tokens
    fig, frame = trajectory_map(run, site="layer_out", neighbours=2)
    paths = frame[frame.kind == "token"]
    assert len(paths) == n * (L + 1)
    assert sorted(paths.step.unique()) == list(range(L + 1))
    assert len(fig.data) == 1 + n  # the context points, then one line per token
    assert fig.data[0].opacity < 0.5 and all(t.mode == "lines+markers" for t in fig.data[1:])
    ctx = frame[frame.kind == "neighbour"]
    assert len(ctx) > 0 and ctx.label.str.contains("near").all()
    # the token points are the PCA of exactly the captured vectors (plus the neighbour rows)
    acts = run.acts
    first = paths[paths.token_index == 3].sort_values("step")
    assert first.label.iloc[0].endswith("encoding") and first.label.iloc[-1].endswith(f"layer {L - 1}")
    _, alone = trajectory_map(run, site="layer_out", neighbours=0)
    vec = np.concatenate(
        [np.concatenate([acts.embedded[t][None].numpy(), acts.layer_out[:, t].numpy()]) for t in range(n)]
    )
    _up_to_sign(alone[["x", "y"]].to_numpy(), pca_2d(vec))


def test_every_path_has_its_own_colour_and_the_followed_one_stands_out(loaded_tiny):
    text = " ".join(["time flies like an arrow fruit flies like a banana"] * 2)  # 20 words, 22 tokens
    run = loaded_tiny.run(text)
    fig, _ = trajectory_map(run, site="layer_out", neighbours=0, highlight=3)
    colours = [t.line.color for t in fig.data]
    assert len(fig.data) == run.n_tokens > 15 and len(set(colours)) == len(colours)
    chosen = [t for t in fig.data if t.name.endswith("(followed)")]
    assert len(chosen) == 1 and chosen[0].name.endswith("#3 (followed)") and chosen[0].line.width == 4
    assert chosen[0].opacity == 1.0 and all(t.opacity < 0.5 for t in fig.data if t is not chosen[0])
    plain, _ = trajectory_map(run, site="layer_out", neighbours=0)
    assert all(t.opacity == 1.0 and t.line.width == 2 for t in plain.data)


def test_trajectory_map_selects_tokens_and_layers_and_refuses_bad_input(loaded_tiny):
    run = loaded_tiny.run(TEXT)
    _, frame = trajectory_map(run, tokens=[1, -1], layers=[0], neighbours=0)
    assert sorted(frame.token_index.unique()) == [1, run.n_tokens - 1] and len(frame) == 4
    with pytest.raises(InputError, match="map method"):
        trajectory_map(run, method="mds")
    with pytest.raises(InputError, match="residual site"):
        trajectory_map(run, site="heads")
    with pytest.raises(InputError, match="token index"):
        trajectory_map(run, tokens=[99])


def test_tsne_runs_and_umap_is_optional():
    pytest.importorskip("sklearn")
    x = np.random.default_rng(1).normal(size=(12, 5))
    assert project(x, "tsne").shape == (12, 2)
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match=r"umap-learn: pip install 'tokentrail\[umap\]'"):
            project(x, "umap")
    else:
        assert project(x, "umap").shape == (12, 2)


# ---- CLI ---------------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_map_and_correct(bert_folder, tmp_path):
    out = tmp_path / "map.html"
    res = runner.invoke(
        app,
        [
            "trace",
            TEXT,
            "-m",
            str(bert_folder),
            "--site",
            "layer_out",
            "--correct",
            "zscore",
            "-t",
            "1",
            "--map",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "corrected zscore" in res.output  # the header says which geometry the numbers have
    html = out.read_text()
    assert "<html>" in html[:200] and "plotly" in html and "Token paths" in html
    assert not list(tmp_path.glob(".*.part"))  # written atomically
    # an existing map is not replaced without --force
    res = runner.invoke(app, ["trace", TEXT, "-m", str(bert_folder), "--map", str(out)])
    assert res.exit_code == 2 and "already exists" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--correct", "zcore"], "unknown correction"),
        (["--correct", "rogue"], "needs a count"),
        (["--map", "x.png"], "unknown output format"),
        (["--map", "x.html", "--map-method", "mds"], "unknown map method"),
        (["--map", "x.html", "--site", "heads"], "--map draws a residual site"),
        (["--map-head", "1.2"], "add --map out.html"),
        (["--map", "x.html", "--map-head", "12"], "--map-head takes LAYER.HEAD"),
    ],
)
def test_cli_geometry_options_fail_in_one_line_before_loading(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["trace", "hello", "-m", "no-such-model-folder", *args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert "no-such-model" not in res.output  # refused before the model was looked up


@pytest.mark.slow
def test_cli_names_rogue_dimensions_on_smollm2():
    res = runner.invoke(
        app, ["trace", "Time flies like an arrow. Fruit flies like a banana.", "-m", "smollm2", "-l", "20", "-k", "3"]
    )
    assert res.exit_code == 0, res.output
    assert "one dimension (dim" in res.output and "--correct" in res.output
    res = runner.invoke(
        app,
        [
            "trace",
            "Time flies like an arrow. Fruit flies like a banana.",
            "-m",
            "smollm2",
            "-l",
            "20",
            "-k",
            "3",
            "--correct",
            "zscore",
        ],
    )
    assert res.exit_code == 0 and "one dimension (dim" not in res.output


def test_iterative_maps_of_too_many_points_are_refused_before_the_model_runs(bert_folder, monkeypatch):
    """t-SNE/UMAP past MAX_EMBEDDED_POINTS would run for minutes: refused with the figure
    (here with the bound lowered to 10 points), before any forward pass; PCA is not bounded."""
    import tokentrail.engine.capture
    from tokentrail.present import maps

    monkeypatch.setattr(maps, "MAX_EMBEDDED_POINTS", 10)
    assert maps.map_points(tokens=4, layers=2, neighbours=3) == 4 * 3 * 4
    with pytest.raises(InputError, match="place up to 48 points; tsne takes at most 10"):
        maps.check_points("tsne", maps.map_points(4, 2, 3))
    maps.check_points("pca", 10**9)
    from patching import patch_everywhere

    patch_everywhere(
        monkeypatch,
        tokentrail.engine.capture,
        "capture",
        lambda *a, **k: (_ for _ in ()).throw(AssertionError("the model ran")),
    )
    out = bert_folder.parent / "refused-map.html"
    res = CliRunner().invoke(
        app,
        ["trace", "time flies like an arrow", "-m", str(bert_folder), "--map", str(out), "--map-method", "tsne", "-q"],
    )
    assert res.exit_code == 2 and "tsne takes at most 10" in res.output and "Traceback" not in res.output, res.output
    assert not out.exists()


# ---- key/query maps of one head (AttentionViz) ---------------------------------------------------
def test_head_map_is_the_pca_of_the_heads_own_queries_and_keys(loaded_tiny):
    import torch

    from tokentrail.engine.capture import head_qkv
    from tokentrail.present.maps import head_map

    run = loaded_tiny.run(TEXT)
    n, layer, head = run.n_tokens, 1, 2
    fig, frame = head_map(run, layer, head)
    assert (
        list(frame.kind) == ["query"] * n + ["key"] * n
        and (frame["layer"] == layer).all()
        and (frame["head"] == head).all()
    )
    # the model's own projections of the layer's input (BERT: post-norm, no RoPE), by hand
    bert = loaded_tiny.adapter.model
    attn = (
        bert.bert.encoder.layer[layer].attention.self
        if hasattr(bert, "bert")
        else bert.encoder.layer[layer].attention.self
    )
    x = run.acts.hidden_states[layer][0] if run.acts.hidden_states[layer].ndim == 3 else run.acts.hidden_states[layer]
    dh = attn.attention_head_size
    with torch.no_grad():
        q = attn.query(x)[:, head * dh : (head + 1) * dh].double().numpy()
        k = attn.key(x)[:, head * dh : (head + 1) * dh].double().numpy()
        np.testing.assert_allclose(
            q, head_qkv(loaded_tiny.adapter, run.acts, layer, "q")[:, head].double().numpy(), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            k, head_qkv(loaded_tiny.adapter, run.acts, layer, "k")[:, head].double().numpy(), rtol=1e-5, atol=1e-6
        )
    X = np.concatenate([q, k])
    Xc = X - X.mean(0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    _up_to_sign_tol(frame[["x", "y"]].to_numpy(), Xc @ vt[:2].T, atol=1e-5)
    assert [t.name for t in fig.data] == ["queries", "keys"]
    assert np.array_equal(np.asarray(fig.data[0].customdata)[:, 1], np.full(n, layer + 1))  # a click selects this layer


def _up_to_sign_tol(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    for j in range(a.shape[1]):
        s = 1.0 if np.dot(a[:, j], b[:, j]) >= 0 else -1.0
        np.testing.assert_allclose(a[:, j], s * b[:, j], atol=atol)


def test_head_map_of_a_grouped_query_head_reads_its_key_value_head():
    import torch
    import transformers

    import tokentrail as tt
    from tokentrail.engine.capture import head_qkv
    from tokentrail.present.maps import head_map

    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    obj = transformers.LlamaForCausalLM(cfg).eval()

    class Tok:
        all_special_ids: list[int] = []

        def __call__(self, text, add_special_tokens=True, **kw):
            return {"input_ids": [3 + (ord(c) % 60) for c in text]}

        def convert_ids_to_tokens(self, ids):
            return [f"t{i}" for i in ids]

    run = tt.load(obj, tokenizer=Tok()).run("abcdefg")
    _, frame = head_map(run, 1, 3, tokens=[1, 2, 5])
    q = head_qkv(run.model.adapter, run.acts, 1, "q")[[1, 2, 5], 3]
    k = head_qkv(run.model.adapter, run.acts, 1, "k")[[1, 2, 5], 1]  # query head 3 reads key/value head 3 // 2
    X = torch.cat([q, k]).double().numpy()
    Xc = X - X.mean(0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    _up_to_sign_tol(frame[["x", "y"]].to_numpy(), Xc @ vt[:2].T, atol=1e-9)
    assert frame.label.iloc[-1].endswith("(key/value head 1)")
    with pytest.raises(InputError, match="head 4 is out of range"):
        head_map(run, 0, 4)
    with pytest.raises(InputError, match="needs a Run"):
        head_map(run.trail(), 0, 0)


def test_cli_map_head(bert_folder, tmp_path):
    out = tmp_path / "heads.html"
    res = runner.invoke(app, ["trace", TEXT, "-m", str(bert_folder), "--map", str(out), "--map-head", "1.2", "-q"])
    assert res.exit_code == 0, res.output
    assert "Queries and keys" in out.read_text()
    res = runner.invoke(
        app, ["trace", TEXT, "-m", str(bert_folder), "--map", str(tmp_path / "h2.html"), "--map-head", "1.9"]
    )
    assert res.exit_code == 2 and "--map-head head 9 is out of range" in res.output

"""The app offers fitted translators (issue 26, ``tokentrail serve --translators DIR``): only
folders under the operator's folder holding a translator tokentrail wrote, never a link;
an identity translator puts the ``<site>_translated`` view beside the raw one, a prediction
translator the fitted lens beside the logit lens, each equal to the library's
(``tt.trace(..., translator=)``); another model's translator is not applied (one line)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("gradio", reason="gradio not installed: pip install -e '.[app]'")

import tokentrail as tt  # noqa: E402
from tokentrail.app import render  # noqa: E402
from tokentrail.app.options import page_options  # noqa: E402
from tokentrail.app.session import Session  # noqa: E402
from tokentrail.app.translator_shelf import TranslatorShelf  # noqa: E402
from tokentrail.app.views import VIEWS, render_views  # noqa: E402
from tokentrail.corpus.fit import fit  # noqa: E402
from tokentrail.spec.errors import InputError  # noqa: E402
from tokentrail.store.translators import save_translator  # noqa: E402

TEXT = "the cat sat on the mat ."
WORDS = "time flies like an arrow fruit a banana the cat sat on mat dog ran fast slow red blue".split()


def corpus(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 10)))) + " ." for _ in range(n)]


@pytest.fixture(scope="module")
def shelf_dir(bert_folder, tmp_path_factory, make_tiny, tokenizer, save_model):
    """ident/ and pred/ fitted on the tiny BERT, other/ on another model, a link to a
    translator outside, a folder with a hand-written translator.json of another format."""
    model = str(bert_folder)
    root = tmp_path_factory.mktemp("translators")
    fit(corpus(12), model, root / "ident", sites=["attn_resid", "layer_out"], batch=4)
    fit(corpus(12), model, root / "pred", kind="prediction", sites=["layer_out"], ridge=1e-3, batch=4)
    other = save_model(tmp_path_factory.mktemp("other"), make_tiny("bert", seed=3, hidden_size=48), tokenizer)
    fit(corpus(6), str(other), root / "other", sites=["attn_resid"], batch=4)
    outside = tmp_path_factory.mktemp("outside")
    save_translator(outside / "t", tt.load_translator(root / "ident"))
    os.symlink(outside / "t", root / "link-out")
    inner = root / "inner-link"  # a translator whose weights are a link out
    inner.mkdir()
    (inner / "translator.json").write_text((root / "ident" / "translator.json").read_text())
    os.symlink(outside / "t" / "translator.safetensors", inner / "translator.safetensors")
    (root / "forged").mkdir()
    (root / "forged" / "translator.json").write_text(json.dumps({"format": "something/1", "kind": "identity"}))
    (root / "forged" / "translator.safetensors").write_bytes(b"")
    return root


def analysed(bert_folder, site="attn_resid", k=3) -> Session:
    s = Session(model=str(bert_folder))
    s.analyse(TEXT, page_options(site, True, "cosine", k, True))
    return s


def rendered(session: Session) -> dict:
    return dict(zip(VIEWS, render_views(session, _Menu(), False, "rank")))


class _Menu:
    entries: dict = {}


def test_the_shelf_offers_only_translators_tokentrail_wrote_inside_its_folder(shelf_dir):
    shelf = TranslatorShelf(shelf_dir)
    assert shelf.names() == ["ident", "other", "pred"]  # no link, no foreign format
    labels = dict((v, label) for label, v in shelf.choices())
    assert labels["none"] == "none"
    assert labels["ident"].startswith("ident: identity, fitted on") and "prediction" in labels["pred"]
    assert shelf.path("ident") == shelf_dir.resolve() / "ident"
    # for the page's model: the translators of another model are marked, its own are not
    marked = dict(
        (v, label) for label, v in shelf.choices(tt.load_translator(shelf_dir / "ident").meta["model_info"]["model"])
    )
    assert [v for v, label in marked.items() if label.endswith("(not this model)")] == ["other"]
    for forged in ("link-out", "inner-link", "forged", "../ident", str(shelf_dir / "ident"), "/etc", None):
        with pytest.raises(InputError, match="no translator"):
            shelf.path(forged)
    with pytest.raises(InputError, match="--translators"):
        TranslatorShelf(None).path("ident")


def test_the_page_offers_the_shelf_and_its_event_applies_only_those(shelf_dir, bert_folder):
    from tokentrail.app import build_app

    demo = build_app(translators=str(shelf_dir))
    config = demo.get_config_file()
    box = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "translator")
    assert [ch[1] for ch in box["props"]["choices"]] == ["none", "ident", "other", "pred"]
    assert box["props"]["value"] == "none" and box["props"]["visible"]
    choose = next(f.fn for f in demo.fns.values() if f.api_name == "choose_translator")
    status_at = VIEWS.index("status")
    s = analysed(bert_folder)
    s.model = str(bert_folder)
    for name in ("link-out", "../ident", str(shelf_dir / "pred")):  # behind Gradio's own list check
        out = choose(s, name, False, "rank")
        assert out[status_at].startswith("**Problem:**") and "no translator" in out[status_at]
        assert s.translator is None
    out = choose(s, "other", False, "rank")  # another model's: refused in one line, not applied
    assert out[status_at].startswith("**Problem:**") and "fitted on" in out[status_at]
    assert s.translator is None
    out = dict(zip(VIEWS, choose(s, "ident", False, "rank")))
    assert s.translator is not None and s.translator[0] == "ident" and out["table_translated"].visible
    out = dict(zip(VIEWS, choose(s, "none", False, "rank")))
    assert s.translator is None and out["translator_note"] == "" and not out["table_translated"].visible
    # after an analysis the choice marks the other model's translator (the analysed model is the tiny BERT)
    menu = next(f.fn for f in demo.fns.values() if f.fn.__name__ == "translator_menu")
    box = menu(s, "ident")
    assert box.value == "ident"
    assert [v for label, v in box.choices if label.endswith("(not this model)")] == ["other"]
    demo.tokentrail_folder.remove()
    bare = build_app()
    box = next(c for c in bare.get_config_file()["components"] if c.get("props", {}).get("elem_id") == "translator")
    assert not box["props"]["visible"]  # no folder: no choice
    bare.tokentrail_folder.remove()


def test_an_identity_translator_puts_the_librarys_translated_view_beside_the_raw_one(shelf_dir, bert_folder):
    shelf = TranslatorShelf(shelf_dir)
    s = analysed(bert_folder)
    assert rendered(s)["translator_note"] == ""
    s.translator = ("ident", shelf.path("ident"))
    want = tt.trace(TEXT, model=str(bert_folder), translator=shelf_dir / "ident", k=3, site="attn_resid")
    got = s.translated()
    assert got is not None
    for site in ("attn_resid", "attn_resid_translated", "layer_out_translated"):
        a, b = got.view(site, "encodings", "cosine"), want.view(site, "encodings", "cosine")
        assert np.array_equal(a.top_ids, b.top_ids)
        for m in ("self_sim", "rank"):
            np.testing.assert_array_equal(a.metrics[m], b.metrics[m])
    out = rendered(s)
    table = out["table_translated"]
    assert table.visible and "attn_resid_translated" in table.label
    assert "`attn_resid_translated` view" in out["translator_note"]
    assert table.value is not None


def test_a_prediction_translator_gives_the_librarys_fitted_lens(shelf_dir, bert_folder):
    shelf = TranslatorShelf(shelf_dir)
    s = analysed(bert_folder)
    s.translator = ("pred", shelf.path("pred"))
    want = tt.trace(TEXT, model=str(bert_folder), translator=shelf_dir / "pred", lens=True, k=3)
    got = s.translated()
    assert got is not None and got.fitted_lens is not None and want.fitted_lens is not None
    np.testing.assert_array_equal(got.fitted_lens.top_ids, want.fitted_lens.top_ids)
    np.testing.assert_array_equal(got.fitted_lens.top_probs, want.fitted_lens.top_probs)
    s.tab = "lens"
    out = rendered(s)
    assert out["lens_fitted"].visible and "Fitted lens (pred)" in out["lens_fitted"].value["plot"]


def test_another_models_translator_is_not_applied(shelf_dir, bert_folder):
    shelf = TranslatorShelf(shelf_dir)
    s = analysed(bert_folder)
    s.translator = ("other", shelf.path("other"))
    with pytest.raises(InputError, match="fitted on") as refused:
        s.translated()
    assert str(shelf_dir) not in str(refused.value)  # the page names the translator, not the server's folder
    out = rendered(s)
    note = out["translator_note"]
    assert note.startswith("Translator **other** not applied:") and "fitted on" in note and "\n" not in note
    assert not out["table_translated"].visible


def test_serve_refuses_a_translators_path_that_is_not_a_folder(tmp_path):
    from typer.testing import CliRunner

    from tokentrail.cli.commands import app as cli_app

    result = CliRunner().invoke(cli_app, ["serve", "--translators", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "--translators" in result.output and "not a folder" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_served_page_applies_an_offered_translator_through_its_endpoint(shelf_dir, bert_folder):
    """Through ``gradio_client``, as another program would: analyse with the tiny BERT,
    choose ``ident``: the translated table comes back; a name not offered is refused by
    Gradio's own list check before the callback runs."""
    import importlib.util
    from pathlib import Path

    gradio_client = pytest.importorskip("gradio_client")
    from tokentrail.app import build_app, launch_options

    spec = importlib.util.spec_from_file_location(
        "tokentrail_e2e_harness", Path(__file__).parent / "e2e" / "conftest.py"
    )
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    model = str(bert_folder)
    demo = build_app(models=[model], translators=str(shelf_dir))
    try:
        with harness.serve(demo, **launch_options()) as url:
            client = gradio_client.Client(url, verbose=False)
            box = next(c for c in demo.get_config_file()["components"] if c["props"].get("elem_id") == "model")
            entry = next(v for _, v in box["props"]["choices"] if Path(v) == Path(model).resolve())
            args = (TEXT, entry, True, "attn_resid", "cosine", 3, True, "none", False, "rank")
            client.predict(*args, api_name="/tokenize")
            out = dict(zip(VIEWS, client.predict("ident", False, "rank", api_name="/choose_translator")))
            assert "`attn_resid_translated` view" in out["translator_note"]
            table = out["table_translated"]
            assert table["visible"] and "attn_resid_translated" in table["label"]
            want = tt.trace(TEXT, model=model, translator=shelf_dir / "ident", k=3)
            view = want.view("attn_resid_translated", "encodings", "cosine")
            token = next(i for i, special in enumerate(want.special) if not special)
            expected = render.neighbour_table(want, view, token).data  # the library's Trail, as the page draws it
            assert table["value"]["headers"] == [str(c) for c in expected.columns]
            assert table["value"]["data"] == expected.astype(str).values.tolist()
            with pytest.raises(gradio_client.exceptions.AppError, match="not in the list of choices"):
                client.predict("link-out", False, "rank", api_name="/choose_translator")
    finally:
        demo.tokentrail_folder.remove()

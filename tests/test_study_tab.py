"""The app's Study tab: only studies under the operator's folder, from a dropdown; what
it shows is the corpus package's own report figures and metadata."""

from __future__ import annotations

import os

import pytest
import torch

gr = pytest.importorskip("gradio", reason="gradio not installed: pip install -e '.[app]'")

from typer.testing import CliRunner  # noqa: E402

from tokentrail.app.study_tab import FIGURES, StudyShelf, show  # noqa: E402
from tokentrail.cli.commands import app as cli_app  # noqa: E402
from tokentrail.corpus import Study, study  # noqa: E402
from tokentrail.corpus.report import metadata, named_figures  # noqa: E402
from tokentrail.spec.errors import InputError  # noqa: E402

TEXTS = ["the cat sat on the mat .", "a dog ran fast .", "time flies like an arrow .", "fruit flies like a banana ."]


@pytest.fixture(scope="module")
def shelf_dir(bert_folder, tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("studies")
    study(TEXTS, str(bert_folder), root / "small", batch=2, sample=100)
    (root / "not-a-study").mkdir()
    outside = tmp_path_factory.mktemp("outside")
    study(TEXTS[:2], str(bert_folder), outside / "secret", batch=2, sample=100)
    os.symlink(outside / "secret", root / "link-out")  # a study, but its real path is outside the folder
    torch.set_num_threads(before)
    return root


def test_the_shelf_offers_only_studies_inside_its_folder(shelf_dir):
    shelf = StudyShelf(shelf_dir)
    assert shelf.names() == ["small"]
    assert shelf.path("small") == (shelf_dir / "small").resolve()
    for name in ("link-out", "not-a-study", "../outside", str(shelf_dir / "small"), "/etc", "", None):
        with pytest.raises(InputError):
            shelf.path(name)
    assert StudyShelf(shelf_dir / "small").names() == ["."]  # the folder itself may be one study


def test_without_a_folder_the_tab_says_how_to_give_one():
    shelf = StudyShelf(None)
    assert shelf.names() == []
    with pytest.raises(InputError, match="--studies"):
        shelf.path("small")


def test_show_gives_the_reports_figures_and_metadata(shelf_dir):
    out = show(StudyShelf(shelf_dir), "small")
    s = Study(shelf_dir / "small")
    want = named_figures(s.aggregate())
    assert "small" in out[0] and "4 texts" in out[0] and "complete" in out[0]
    assert dict(zip(out[1].iloc[:, 0], out[1]["value"])) == metadata(s.manifest)
    for name, fig in zip(FIGURES, out[2:]):
        assert fig.layout.title.text == want[name].layout.title.text
        assert [list(t.y) for t in fig.data if t.y is not None] == [
            list(t.y) for t in want[name].data if t.y is not None
        ]


def test_the_app_mounts_the_tab(shelf_dir):
    from tokentrail.app import build_app

    demo = build_app(studies=str(shelf_dir))
    config = demo.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"tab-study", "study-name", "study-open"} <= ids
    dropdown = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "study-name")
    assert [ch[0] for ch in dropdown["props"]["choices"]] == ["small"]
    demo.tokentrail_folder.remove()


def test_serve_refuses_a_studies_path_that_is_not_a_folder(tmp_path):
    result = CliRunner().invoke(cli_app, ["serve", "--studies", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "--studies" in result.output and "not a folder" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow  # serves the page (its initial analysis loads the bundled model)
def test_the_served_endpoint_refuses_names_it_did_not_offer(shelf_dir):
    import importlib.util
    from pathlib import Path

    gradio_client = pytest.importorskip("gradio_client")
    from tokentrail.app import build_app, launch_options

    spec = importlib.util.spec_from_file_location(
        "tokentrail_e2e_harness", Path(__file__).parent / "e2e" / "conftest.py"
    )
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    demo = build_app(studies=str(shelf_dir))
    try:
        with harness.serve(demo, **launch_options()) as url:
            client = gradio_client.Client(url, verbose=False)
            ok = client.predict("small", api_name="/open_study")
            assert "small" in ok[0] and "4 texts" in ok[0]
            # Gradio refuses a value outside the dropdown's choices before the callback runs;
            # StudyShelf.path refuses it again behind that (test above)
            for forged in ("link-out", "../outside/secret", str(shelf_dir / "small"), "/etc"):
                with pytest.raises(gradio_client.exceptions.AppError, match="not in the list of choices"):
                    client.predict(forged, api_name="/open_study")
    finally:
        demo.tokentrail_folder.remove()


def test_a_correction_fitted_to_an_offered_study_is_the_librarys(shelf_dir, bert_folder):
    """The correction selector offers each study of the shelf; "zscore@small" is the
    library's zscore fitted to that study, through the page's own options and Session.
    Only offered studies: anything else is refused in one line before any model work."""
    import numpy as np

    import tokentrail as tt
    from tokentrail.app.options import correction_choices, page_options
    from tokentrail.app.session import Session

    shelf = StudyShelf(shelf_dir)
    assert ("zscore, fitted to study small", "zscore@small") in correction_choices(shelf)
    assert all("@" not in value for _, value in correction_choices(StudyShelf(None)))
    opts = page_options("attn_resid", True, "cosine", 5, True, "zscore@small", shelf)
    assert opts.correct == "zscore" and opts.correct_from == str((shelf_dir / "small").resolve())
    for bad, msg in (("zscore@secret", "no study"), ("zscore@../outside", "no study"), ("zscore@link-out", "no study")):
        with pytest.raises(InputError, match=msg):
            page_options("attn_resid", True, "cosine", 5, True, bad, shelf)
    with pytest.raises(InputError, match="--studies"):
        page_options("attn_resid", True, "cosine", 5, True, "zscore@small", None)

    session = Session(model=str(bert_folder))
    session.analyse(TEXTS[2], opts)
    want = tt.trace(
        TEXTS[2], str(bert_folder), site="attn_resid", k=5, correct="zscore", correct_from=shelf_dir / "small"
    )
    got = session.trail.view("attn_resid", "encodings", "cosine")
    ref = want.view("attn_resid", "encodings", "cosine")
    assert np.array_equal(got.top_ids, ref.top_ids) and np.array_equal(got.metrics["rank"], ref.metrics["rank"])
    text_fit = tt.trace(TEXTS[2], str(bert_folder), site="attn_resid", k=5, correct="zscore").view(
        "attn_resid", "encodings", "cosine"
    )
    assert not np.array_equal(got.metrics["self_sim"], text_fit.metrics["self_sim"])  # the study's fit, not the text's

"""The IOI experiment: its prompts and features, its hypotheses, and `causal-scrub run ioi`.

No GPT-2 weights are needed: the hypotheses are checked and scrubbed on a random-weight model
with GPT-2 small's 12 layers x 12 heads (narrow, so it is fast) and a word-level tokenizer,
and the `--weights` path is exercised with a tiny GPT-2 saved in the Hugging Face format.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import causal_scrubbing as cs
from causal_scrubbing.cli import app
from causal_scrubbing.core.names import head_name
from causal_scrubbing.experiments import ioi


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors here are tiny: one thread is fastest, and is not slowed by a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return ioi.WordTokenizer.for_ioi()


@pytest.fixture(scope="module")
def ds(tok):
    return ioi.dataset(tok, n=2 * len(ioi.TEMPLATES) * 20, seed=0)


def small_gpt2(tok, seed: int = 0) -> cs.models.Transformer:
    torch.manual_seed(seed)
    cfg = cs.models.Config(n_layers=12, d_model=48, n_heads=12, d_head=4, d_mlp=96,
                           d_vocab=len(tok), n_ctx=32, act_fn="gelu_new")
    return cs.models.Transformer(cfg).eval()


@pytest.fixture(scope="module")
def exp(tok):
    return ioi.experiment(small_gpt2(tok), tok, n_dataset=4000)


# ---- prompts and features ---------------------------------------------------------------------


def test_io_appears_once_and_s_twice_at_the_recorded_positions(ds, tok):
    rows = torch.arange(len(ds))
    t = ds["tokens"]
    assert torch.equal(t[rows, ds["io_pos"]], ds["io"])
    assert torch.equal(t[rows, ds["s1_pos"]], ds["s"])
    assert torch.equal(t[rows, ds["s2_pos"]], ds["s"])
    assert ((t == ds["io"][:, None]).sum(1) == 1).all()
    assert ((t == ds["s"][:, None]).sum(1) == 2).all()
    assert (ds["io"] != ds["s"]).all()
    assert (ds["end_pos"] == t.shape[1] - 1).all()
    assert (t[:, -1] == tok.encode(" to")[0]).all()  # END is " to" in every template
    assert (ds["s2_pos"] > torch.maximum(ds["io_pos"], ds["s1_pos"])).all()


def test_orders_and_templates_are_balanced_and_aligned(ds, tok):
    n_t = len(ioi.TEMPLATES)
    cells = torch.bincount(ds["template"] * 2 + ds["order"], minlength=2 * n_t)
    assert (cells == 20).all()  # every (template, order) cell has the same number of rows
    abba = ds["order"] == ioi.ABBA
    assert (ds["io_pos"][abba] < ds["s1_pos"][abba]).all()  # ABBA: IO first
    assert (ds["io_pos"][~abba] > ds["s1_pos"][~abba]).all()  # BABA: S first
    for k in range(n_t):
        rows = ds["template"] == k
        for field in ("s2_pos", "end_pos"):
            assert ds[field][rows].unique().numel() == 1, (k, field)
        for order in (ioi.ABBA, ioi.BABA):
            cell = rows & (ds["order"] == order)
            assert ds["io_pos"][cell].unique().numel() == ds["s1_pos"][cell].unique().numel() == 1
        # the same tokens everywhere but the name, place and object slots
        varying = (ds["tokens"][rows] != ds["tokens"][rows][0]).any(0).nonzero().flatten()
        assert len(varying) <= 5, (k, varying)
    assert (ds["tokens"][:, 0] == tok.bos_token_id).all()


def test_piecewise_encoding_equals_encoding_the_whole_prompt(ds, tok):
    bos = tok.decode([tok.bos_token_id])
    for i in range(0, len(ds), 37):
        text = ioi.prompt(tok, ds, i)
        body = text.replace(bos, "")  # the prompt without its BOS and padding
        n_pad = int((ds["tokens"][i] == tok.bos_token_id).sum())
        assert ds["tokens"][i, n_pad:].tolist() == tok.encode(body), text


def test_features_have_one_integer_value_per_row(ds):
    n = len(ds)
    for field in ("io", "s", "io_pos", "s1_pos", "s2_pos", "end_pos", "template", "order"):
        assert ds[field].shape == (n,) and ds[field].dtype == torch.int64, field
    assert ds["tokens"].dtype == torch.int64 and ds["tokens"].shape[0] == n
    assert ioi.s_and_order(ds).shape == (n, 2)
    assert ioi.s_and_positions(ds).shape == (n, 3)


def test_words_that_are_not_one_token_are_dropped(tok):
    class Splits:  # " Mary" and " John" become two tokens
        bos_token_id = 0

        def encode(self, text, add_special_tokens=False):
            ids = tok.encode(text)
            return [ids[0], ids[0]] if text in (" Mary", " John") else ids

        def decode(self, ids):
            return tok.decode(ids)

    d = ioi.dataset(Splits(), n=200)
    gone = {tok.encode(" Mary")[0], tok.encode(" John")[0]}
    assert not set(d["io"].tolist()) & gone and not set(d["s"].tolist()) & gone
    with pytest.raises(cs.ScrubError, match="single tokens"):
        ioi.dataset(Splits(), n=10, names=["Mary", "John", "Kate"])


# ---- loss and hypotheses ----------------------------------------------------------------------


def test_loss_is_the_negative_logit_difference():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 5.0]])
    ref = cs.Dataset({"io": torch.tensor([1, 0]), "s": torch.tensor([2, 2])})
    assert ioi.logit_diff(logits, ref).tolist() == [2.0, -3.0]
    assert ioi.loss_fn(logits, ref).tolist() == [-2.0, 3.0]
    assert ioi.ce_loss_fn(logits, ref).shape == (2,)


def test_roles_are_the_published_heads_and_disjoint():
    assert ioi.ROLES["name mover"] == [head_name(9, 9), head_name(9, 6), head_name(10, 0)]
    heads = [h for hs in ioi.ROLES.values() for h in hs]
    assert len(heads) == len(set(heads)) == 26


def test_every_hypothesis_is_valid_on_a_gpt2_small_shaped_graph(exp):
    sizes = {}
    for name, root in exp.hypotheses.items():
        corr = cs.check(exp.graph, root)
        sizes[name] = len(corr.nodes)
    assert sizes == {"nothing scrubbed": 1, "everything scrubbed": 1, "name movers": 2,
                     "+ S-inhibition": 4, "+ induction & duplicate": 7, "+ previous token": 9,
                     "all name movers": 4, "full circuit": 11}
    assert exp.baseline is exp.hypotheses["everything scrubbed"]


@pytest.mark.filterwarnings("ignore::causal_scrubbing.UndefinedRecoveryWarning")  # random weights
def test_identity_recovers_everything_and_a_scrub_runs_end_to_end(exp):
    hyps = {k: exp.hypotheses[k] for k in ("nothing scrubbed", "+ induction & duplicate")}
    results = cs.scrub_many(exp.graph, hyps, exp.dataset, exp.loss_fn, n=16, seed=0,
                            baseline=exp.baseline, subsets=exp.subsets, n_bootstrap=100)
    same = results["nothing scrubbed"]
    torch.testing.assert_close(same.per_example["scrubbed"], same.per_example["model"])
    assert same.loss_recovered == pytest.approx(1.0)
    other = results["+ induction & duplicate"]
    assert torch.isfinite(other.per_example["scrubbed"]).all() and other.loss != same.loss


# ---- the command line -------------------------------------------------------------------------


def test_run_without_weights_runs_the_bundled_model(tmp_path, monkeypatch):
    """`causal-scrub run ioi` with no weights scrubs the bundled model's circuit, and its
    numbers are docs/ioi.md's table, row for row."""
    from test_docs import blocks

    monkeypatch.delenv(ioi.WEIGHTS_ENV, raising=False)
    result = CliRunner().invoke(app, ["run", "ioi", "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 0, result.output
    (table,) = [b for b in blocks(Path(__file__).parents[1] / "docs" / "ioi.md")
                if b.rows_of == "causal-scrub run ioi"]
    printed = result.output.splitlines()
    for line in table.body.splitlines():
        assert line in printed, f"docs/ioi.md's table is stale: {line!r} is not printed now"
    assert "small gap" not in result.output  # the gap is 21.6 logits: percentages mean something
    listed = CliRunner().invoke(app, ["experiments"])
    assert re.search(r"^ioi\s", listed.output, flags=re.M)


def test_the_bundled_model_does_ioi_through_the_classes_it_is_said_to_have(tok):
    """The circuit docs/ioi.md describes: the IO finders at S2 attend to the IO, the movers at
    END attend to S2, the movers' direct effect favours IO over S, and the logit difference
    is large on every prompt."""
    from causal_scrubbing.experiments.ioi import analysis, trained

    model, tokenizer = trained.load()
    assert tokenizer.words == tok.words
    rows = ioi.dataset(tok, 600, seed=0)
    ioi.read_at_end(model, rows["tokens"].shape[1])
    with torch.inference_mode():
        diff = ioi.logit_diff(model(rows["tokens"]), rows)
    assert float(diff.min()) > 5
    attention = analysis.attention_table(model, rows)
    assert all(attention[h]["S2->IO"] > 0.9 for h in trained.ROLES["IO finder"])
    assert all(attention[h]["END->S2"] > 0.9 for h in trained.ROLES["mover"])
    direct = analysis.direct_logit_table(model, rows)
    assert all(direct[h]["all"] > 1 for h in trained.ROLES["mover"])
    assert all(abs(direct[h]["all"]) < 0.2 for h in trained.ROLES["IO finder"])


def test_a_bundled_checkpoint_with_another_vocabulary_is_refused(tmp_path):
    import json
    import shutil

    from causal_scrubbing.experiments.ioi import trained

    src = Path(cs.models.__file__).parent.parent / "checkpoints"
    for suffix in (".json", ".safetensors", "_train_log.json"):
        shutil.copy(src / f"ioi{suffix}", tmp_path / f"ioi{suffix}")
    log = json.loads((tmp_path / "ioi_train_log.json").read_text())
    log["vocabulary"][5] = " Zebedee"
    (tmp_path / "ioi_train_log.json").write_text(json.dumps(log))
    with pytest.raises(cs.core.errors.CheckpointError, match="first difference at id 5.*Retrain"):
        trained.load(str(tmp_path / "ioi"))


def test_run_with_a_missing_weights_directory_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(app, ["run", "ioi", "--weights", str(tmp_path / "nowhere"),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert "Traceback" not in result.output


def test_weights_option_is_refused_by_experiments_without_it(tmp_path):
    result = CliRunner().invoke(app, ["run", "toy", "--weights", str(tmp_path),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "takes no --weights option" in result.output


def test_build_loads_a_local_hugging_face_directory(tmp_path, tok):
    """A tiny GPT-2 and a GPT-2-style (byte-level, word-level vocabulary) tokenizer saved as
    Hugging Face files: what `--weights` reads, minus the size."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {w.replace(" ", "Ġ"): i for w, i in tok.vocab.items()}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>")
    fast.save_pretrained(tmp_path)
    config = transformers.GPT2Config(n_layer=12, n_head=12, n_embd=24, n_positions=32,
                                     vocab_size=len(tok), bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)

    exp = ioi.build(weights=tmp_path, n_dataset=500)
    ours = ioi.dataset(tok, n=500)
    assert torch.equal(exp.dataset["tokens"], ours["tokens"])  # same ids as the word tokenizer
    assert exp.graph.forward(exp.dataset.rows(torch.arange(3))).shape == (3, len(tok))
    cs.check(exp.graph, exp.hypotheses["full circuit"])

"""tracr-compiled transformers and auto-circuit's official circuits as ground truth.

auto-circuit compiles two RASP programs with tracr (`reverse`, `xproportion`) into
TransformerLens models and publishes, for each, the circuit that must be kept under resample
ablation. Here: both import exactly (logits equal to the TransformerLens model's on every task
input), their graphs have auto-circuit's edges under our names, the official circuits recover
the loss they should under causal scrubbing (and the reverse one, which leaves out the middle
position, exactly what it loses there), and the search finds each official circuit.

Everything compiles locally (no download); the tests that need auto-circuit are skipped, with
that reason, only where the `tracr` extra is not installed. Each process compiles each model
once (about 10 s, `tracr.compile_task` caches it).
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch

import causal_scrubbing as cs
from causal_scrubbing import experiments
from causal_scrubbing.core.errors import ExtraNotInstalled
from causal_scrubbing.experiments import tracr

TASKS = tracr.TASKS


@pytest.fixture(scope="module")
def ac():
    return pytest.importorskip("auto_circuit", reason="the [tracr] extra (auto-circuit) is not "
                                                      "installed: pip install '.[tracr]'")


@pytest.fixture(scope="module")
def built(ac) -> dict[str, experiments.Experiment]:
    torch.set_num_threads(1)
    return {task: tracr.build(task) for task in TASKS}


# ---- the import -------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_import_gives_the_transformer_lens_logits_on_every_input(ac, task):
    compiled = tracr.compile_task(task)
    model = tracr.load_model(task)
    ds = tracr.dataset(task, repeats=1)
    with torch.no_grad():
        theirs = compiled.tl_model(ds["tokens"])  # [n, 6, d_vocab_out]
        ours = model(ds["tokens"])
        graph_out = model.graph().forward(ds)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(graph_out, theirs)


@pytest.mark.parametrize("task", TASKS)
def test_imported_config_bos_and_vocabulary(ac, task):
    compiled, model = tracr.compile_task(task), tracr.load_model(task)
    cfg, tc = model.cfg, compiled.tl_model.cfg
    assert (cfg.normalization_type, cfg.act_fn, cfg.attention_dir) == ("none", "relu", "bidirectional")
    # the vocabulary is the task's tokens plus BOS and tracr's pad token; the output is the
    # task's tokens (reverse) or one number (xproportion)
    assert cfg.d_vocab == tc.d_vocab == len(compiled.vocab) + 2
    assert cfg.d_vocab_out == tc.d_vocab_out == {"reverse": len(compiled.vocab), "xproportion": 1}[task]
    assert (cfg.n_layers, cfg.d_mlp, cfg.n_ctx) == (tc.n_layers, tc.d_mlp, tracr.LENGTH + 1)
    ds = tracr.dataset(task, repeats=1)
    assert len(ds) == len(compiled.vocab) ** tracr.LENGTH
    assert (ds["tokens"][:, 0] == compiled.encoding[tracr.BOS]).all()


@pytest.mark.parametrize("task", TASKS)
def test_imported_model_solves_its_task(ac, task):
    ds = tracr.dataset(task, repeats=1)
    with torch.no_grad():
        out = tracr.load_model(task)(ds["tokens"])[:, 1:]  # [n, 5, d_vocab_out]
    if task == "reverse":
        assert torch.equal(out.argmax(-1), ds["target"])
    else:
        torch.testing.assert_close(out[..., 0], ds["target"])


# ---- auto-circuit's edges on our graph ------------------------------------------------------


def test_edge_names_map_both_ways():
    assert tracr.triples("Resid Start->MLP 0") == {("embed", "m0", "in"), ("pos_embed", "m0", "in")}
    assert tracr.triples("A1.0->Resid End") == {("a1.h0", "out", "resid")}
    for name in ("MLP 2->A3.0.Q", "A0.0->A1.0.K", "Resid Start->Resid End"):
        assert {tracr.edge_name(t) for t in tracr.triples(name)} == {name}
    with pytest.raises(cs.ScrubError, match="not an auto-circuit destination"):
        tracr.triples("MLP 0->A1.0.X")
    with pytest.raises(cs.ScrubError, match="SOURCE->DESTINATION"):
        tracr.triples("MLP 0")


@pytest.mark.parametrize("task", TASKS)
def test_graph_has_auto_circuits_edges(ac, task):
    """Our graph, in auto-circuit's names, is auto-circuit's own factorized graph of the model."""
    graph_utils = tracr.auto_circuit("auto_circuit.utils.graph_utils")
    tl_model = copy.deepcopy(tracr.compile_task(task).tl_model)  # patchable_model changes it
    patchable = graph_utils.patchable_model(tl_model, factorized=True, separate_qkv=True)
    assert sorted(tracr.edge_names(tracr.load_model(task).graph())) == sorted(
        e.name for e in patchable.edges)


def test_official_circuits_as_auto_circuit_defines_them(ac):
    reverse, xprop = tracr.official_edges("reverse"), tracr.official_edges("xproportion")
    assert reverse == {"A3.0->Resid End": (1, 2, 4, 5), "Resid Start->A3.0.V": (1, 2, 4, 5)}
    assert set(xprop) == {"Resid Start->MLP 0", "MLP 0->A1.0.V", "A1.0->Resid End"}
    assert set(xprop.values()) == {(1, 2, 3, 4, 5)}  # every position but BOS
    with pytest.raises(cs.ScrubError, match="Unknown tracr circuit"):
        tracr.official_edges("reverse", "mine")


def test_positions_kept_must_fit_the_split(ac):
    model = tracr.load_model("reverse")
    ds = tracr.dataset("reverse", repeats=1)
    official = tracr.official_edges("reverse")
    graph = tracr.circuit_graph(model, tracr.position_groups([official]), ds.rows(torch.arange(4)))
    assert sorted(graph.ports("a3.h0")["v"]) == ["a3.h0.v@03", "a3.h0.v@1245"]
    with pytest.raises(cs.ScrubError, match="not a union of the position groups"):
        tracr.circuit_triples(graph, {"Resid Start->A3.0.V": (1, 2)})
    with pytest.raises(cs.ScrubError, match="not split by position"):
        tracr.circuit_triples(graph, {"Resid Start->A3.0.K": (1, 2)})


# ---- the official circuits, scrubbed ------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_official_circuit_at_every_position_recovers_all_the_loss(built, task):
    run = experiments.run_experiment(built[task])
    assert run.results["official, every position"].loss_recovered == pytest.approx(1.0, abs=1e-6)
    assert run.model_loss < run.baseline_loss


def test_official_xproportion_circuit_recovers_all_the_loss(built):
    run = experiments.run_experiment(built["xproportion"])
    for key in ("official", "ACDC paper"):
        assert run.results[key].loss_recovered == pytest.approx(1.0, abs=1e-6)


def test_official_reverse_circuit_loses_exactly_the_middle_position(built):
    """auto-circuit's reverse circuit keeps positions 1, 2, 4, 5: the output at position 3
    (which reads the token at position 3) then reads another input. Adding position 3 back
    recovers everything, and the circuit's loss is the model's at the other positions."""
    exp = built["reverse"]
    run = experiments.run_experiment(exp)
    assert run.results["official"].loss_recovered < 0.9
    official = tracr.official_edges("reverse")
    with_middle = {name: (*ps, 3) for name, ps in official.items()}
    model = tracr.load_model("reverse")
    graph = tracr.circuit_graph(model, tracr.position_groups([official, with_middle]),
                                exp.dataset.rows(torch.arange(4)))
    hyps = {k: cs.searching.build_hypothesis(graph, tracr.circuit_triples(graph, edges))
            for k, edges in (("official", official), ("with middle", with_middle))}
    results = cs.scrub_many(graph, hyps, exp.dataset, exp.loss_fn, n=None, seed=0)
    assert results["with middle"].loss_recovered == pytest.approx(1.0, abs=1e-6)
    assert results["official"].loss_recovered == pytest.approx(run.results["official"].loss_recovered)


def test_run_tracr_prints_both_tasks(built, tmp_path):
    from typer.testing import CliRunner

    from causal_scrubbing.cli import app

    result = CliRunner().invoke(app, ["run", "tracr", "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    for task in TASKS:
        assert f"tracr-{task}: tracr-compiled {task} model" in result.output
        assert (tmp_path / "run" / f"tracr-{task}" / "results.json").is_file()
    assert result.output.count("official, every position") == 2


def test_suite_is_not_one_experiment():
    with pytest.raises(cs.ScrubError, match="suite of experiments .*tracr-reverse, tracr-xproportion"):
        experiments.load("tracr")


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "auto_circuit", None)  # import auto_circuit raises ImportError
    with pytest.raises(ExtraNotInstalled, match=r"causal-scrubbing\[tracr\]"):
        tracr.auto_circuit("auto_circuit.model_utils.tracr_model_utils")


# ---- the search against the official circuits --------------------------------------------------

#: The search threshold at which the found edges are the official circuit's (component level:
#: an auto-circuit edge is found when either of its `Resid Start` senders is kept).
THRESHOLD = 0.95


@pytest.mark.parametrize("task", TASKS)
def test_search_finds_the_official_circuit(built, task):
    exp = built[task]
    assert exp.search_graph is not None
    found = cs.search(exp.search_graph, exp.dataset, exp.loss_fn, threshold=THRESHOLD, n=300)
    names = {tracr.edge_name((e.sender, e.receiver, e.port)) for e in found.kept} - {None}
    assert names == set(tracr.official_edges(task))
    assert found.heldout.loss_recovered >= THRESHOLD


# ---- any RASP program: compiled, imported, its true circuit found -----------------------------
#
# Programs written here (not in the suite), compiled at lengths and vocabularies of their own:
# the imported model reproduces tracr's compiled model on every input, the true circuit read
# off the compiler's allocation recovers all the loss, and the search finds exactly it.

from causal_scrubbing.experiments.tracr import compile as tc  # noqa: E402
from causal_scrubbing.experiments.tracr import programs  # noqa: E402


@pytest.fixture(scope="module")
def rasp(ac):
    return tc.tracr_module("tracr.rasp.rasp")


def _first_plus(rasp):
    """Categorical, 2 layers (layer 1's attention is empty): whether (first token + token) % 3
    is 0, at every position."""
    first = rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, lambda k, q: k == 0),
                           rasp.tokens).named("first")
    plus = rasp.SequenceMap(lambda a, b: (a + b) % 3, first, rasp.tokens).named("plus")
    return rasp.Map(lambda x: x == 0, plus).named("is_zero")


def _frac_a_below(rasp):
    """Numerical, 2 layers: among the tokens <= this one, the fraction that are "a", minus
    whether this one is "a"."""
    is_a = rasp.numerical(rasp.Map(lambda t: 1 if t == "a" else 0, rasp.tokens)).named("is_a")
    below = rasp.numerical(rasp.Aggregate(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.LEQ),
                                          is_a, default=0)).named("frac_a_below")
    return rasp.numerical(rasp.LinearSequenceMap(below, is_a, 1, -1)).named("out")


#: (program, vocab, max_seq_len, its true circuit between components, written from the program)
CUSTOM = {
    "first_plus": (_first_plus, {0, 1, 2}, 4, {
        ("embed", "a0.h0", "v"),  # first: aggregates tokens (query and key read indices: constant)
        ("a0.h0", "m0", "in"), ("embed", "m0", "in"),  # plus: SequenceMap(first, tokens)
        ("m0", "m1", "in"),  # is_zero: Map(plus)
        ("m1", "out", "resid")}),
    "frac_a_below": (_frac_a_below, {"a", "b", "c"}, 6, {
        ("embed", "m0", "in"),  # is_a: Map(tokens)
        ("embed", "a1.h0", "q"), ("embed", "a1.h0", "k"), ("m0", "a1.h0", "v"),  # frac_a_below
        ("a1.h0", "m1", "in"), ("m0", "m1", "in"),  # out: LinearSequenceMap(frac_a_below, is_a)
        ("m1", "out", "resid")}),
}


@pytest.fixture(scope="module")
def custom(rasp) -> dict[str, tc.ProgramExperiment]:
    torch.set_num_threads(1)
    return {name: tc.from_program(make(rasp), vocab=vocab, max_seq_len=n)
            for name, (make, vocab, n, _) in CUSTOM.items()}


@pytest.mark.parametrize("name", CUSTOM)
def test_program_imports_as_tracr_compiled_it(custom, name):
    """Every input of every length (padded in one batch): our model, and its graph, give
    tracr's own residual values on the output space at every real position."""
    cp = custom[name].compiled
    seqs = tc.program_inputs(cp.vocab, cp.max_seq_len)
    tokens = cp.encode(seqs)
    with torch.no_grad():
        ours, graph_out = cp.model(tokens), cp.model.graph().forward(cs.Dataset({"tokens": tokens}))
    torch.testing.assert_close(graph_out, ours)
    theirs = cp.tracr_output(seqs)
    for i, s in enumerate(seqs):
        torch.testing.assert_close(ours[i, : len(s) + 1].double(), torch.from_numpy(theirs[i]).double(),
                                   atol=1e-5, rtol=1e-5)
    # and the output decodes to the program's own value at every defined position
    ds = custom[name].dataset
    with torch.no_grad():
        out = cp.model(ds["tokens"])[:, 1:]  # [n, L, d_vocab_out]
    valid = ds["valid"]
    if cp.categorical:
        assert torch.equal(out.argmax(-1)[valid], ds["target"][valid])
    else:
        torch.testing.assert_close(out[..., 0][valid], ds["target"][valid], atol=1e-3, rtol=0)


def test_compilation_is_tracrs_own(custom, rasp):
    """Our steps give the parameters `compile_rasp_to_model` gives, and tracr's labels put
    the unembedding on the output SOp's dimensions (not the first ones)."""
    compiling = tc.tracr_module("tracr.compiler.compiling")
    cp = custom["first_plus"].compiled
    theirs = compiling.compile_rasp_to_model(cp.program, vocab={0, 1, 2}, max_seq_len=4,
                                             compiler_bos=tc.COMPILER_BOS)
    assert theirs.residual_labels == cp.assembled.residual_labels
    for key, params in theirs.params.items():
        for p, value in params.items():
            assert (value == cp.assembled.params[key][p]).all(), (key, p)
    labels = [cp.assembled.residual_labels[i] for i in cp.output_dims]
    assert labels == [f"{cp.output}:False", f"{cp.output}:True"] and cp.output_dims[0] > 0
    assert cp.output_values == [False, True]


@pytest.mark.parametrize("name", CUSTOM)
def test_true_circuit_is_read_off_the_program(custom, name):
    exp = custom[name]
    assert tc.component_edges(exp.true_edges) == CUSTOM[name][3]
    # the plumbing: every head of the circuit reads which positions exist
    heads = {r for _, r, _ in CUSTOM[name][3] if r.startswith("a")}
    assert {(s, r, p) for s, r, p in exp.true_edges if s == "pad_mask"} == {
        ("pad_mask", h, "mask") for h in heads}
    # every read, constant ones included: the reads of indices add pos_embed's edges
    reads = exp.compiled.read_edges()
    assert tc.component_edges(exp.true_edges) <= reads
    assert all(s == "pos_embed" for s, _, _ in reads - exp.true_edges)


@pytest.mark.parametrize("name", CUSTOM)
def test_true_circuit_recovers_all_the_loss(custom, name):
    exp = custom[name]
    run = experiments.run_experiment(exp, n=300)
    assert run.results["true circuit"].loss_recovered == pytest.approx(1.0, abs=1e-6)
    assert run.model_loss < run.baseline_loss


@pytest.mark.parametrize("name", CUSTOM)
def test_search_finds_the_true_circuit(custom, name):
    score = programs.score_search(custom[name], threshold=THRESHOLD)
    assert (score.precision, score.recall) == (1.0, 1.0)
    assert score.heldout_recovered >= THRESHOLD


def test_reads_the_function_ignores_are_not_in_the_circuit(rasp):
    """A selector whose predicate ignores its query: with every input of one length the query's
    read changes nothing and is no edge of the true circuit (the search agrees); with several
    lengths it is one, since it tells a token from a padded position."""
    count_a = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, lambda k, q: k == "a"))
    seqs = tc.program_inputs(["a", "b"], 4, lengths=[4])
    exp = tc.from_program(count_a, vocab={"a", "b"}, max_seq_len=4, inputs=seqs)
    cp = exp.compiled
    assert ("embed", "a0.h0", "q") in cp.read_edges()
    assert tc.component_edges(exp.true_edges) == {("embed", "a0.h0", "k"), ("a0.h0", "m0", "in"),
                                                  ("m0", "out", "resid")}
    assert not any(s == "pad_mask" for s, _, _ in exp.true_edges)  # one length: nothing padded
    assert ("embed", "a0.h0", "q") in cp.true_edges(lengths_vary=True)
    score = programs.score_search(exp, threshold=THRESHOLD)
    assert (score.precision, score.recall) == (1.0, 1.0)


def test_bad_programs_get_clear_errors(rasp):
    with pytest.raises(cs.ScrubError, match="must be a RASP SOp"):
        tc.compile_program("tokens", vocab={"a"}, max_seq_len=3)
    with pytest.raises(cs.ScrubError, match="non-empty set"):
        tc.compile_program(rasp.tokens, vocab=set(), max_seq_len=3)
    with pytest.raises(cs.ScrubError, match="must not contain tracr's own tokens"):
        tc.compile_program(rasp.tokens, vocab={"compiler_bos"}, max_seq_len=3)
    with pytest.raises(cs.ScrubError, match="max_seq_len must be a positive integer"):
        tc.compile_program(rasp.tokens, vocab={"a"}, max_seq_len=0)
    with pytest.raises(cs.ScrubError, match="no operation to compile"):
        tc.compile_program(rasp.tokens, vocab={"a"}, max_seq_len=3)
    # a categorical aggregate with a default tracr cannot compile
    bad = rasp.Aggregate(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ), rasp.tokens,
                         default="a").named("bad")
    with pytest.raises(cs.ScrubError, match="tracr cannot compile the program 'bad_.*only supports None "
                                            "as default value"):
        tc.compile_program(bad, vocab={"a", "b"}, max_seq_len=3)
    cp = tc.compile_program(rasp.Map(lambda t: t, rasp.tokens), vocab={"a", "b"}, max_seq_len=2)
    with pytest.raises(cs.ScrubError, match="has length 3; this program was compiled for lengths 1 to 2"):
        cp.encode([("a", "b", "a")])
    with pytest.raises(cs.ScrubError, match=r"tokens \['z'\] outside the vocabulary"):
        cp.encode([("z",)])


# ---- the library suite --------------------------------------------------------------------------


def test_suite_has_programs_of_every_depth_and_both_kinds():
    members = experiments.members("tracr-lib")
    assert members is not None and len(members) == len(programs.PROGRAMS) >= 6
    assert all(m in experiments.names() for m in members)


@pytest.mark.parametrize("name", list(programs.PROGRAMS))
def test_search_finds_each_library_programs_true_circuit(ac, name):
    torch.set_num_threads(1)
    exp = experiments.load(programs.experiment_name(name))
    true = cs.scrub(exp.graph, exp.hypotheses["true circuit"], exp.dataset, exp.loss_fn, n=300)
    assert true.loss_recovered == pytest.approx(1.0, abs=1e-6)
    score = programs.score_search(exp, threshold=THRESHOLD)
    assert (score.precision, score.recall) == (1.0, 1.0), score

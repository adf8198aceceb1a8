"""The core: the model as a graph, hypotheses over it, draws, the two evaluators, statistics.

Everything causal scrubbing means lives here, and nothing here knows about pipelines, search,
reports, Ray, bundled experiments or the command line. In import order (each module imports
only those before it):

- `errors`, `data`, `names`: every error and warning class; datasets; head names.
- `graph`: the model as a DAG of named nodes whose ports sum the nodes wired into them.
- `paths`, `samplers`, `rewrites`: which paths a claim covers; what a claim resamples from;
  equivalent graphs (split by position, h = g + (h - g), attention-pattern splits).
- `hypothesis`: interpretation trees, every validity check, the treeified graph they induce.
- `draws`: every node's dataset, drawn top down, and the seeding protocol.
- `memory`, `engine`, `reference`: the fast evaluator and the literal one-path-at-a-time oracle.
- `results`, `statistics`: results that save and load; loss recovered with intervals.
"""

__version__ = "0.1.0"

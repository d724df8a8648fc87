"""The recovery study: does the training pipeline find the truth, and stay quiet on noise?

Fresh SYNTHETIC training cohorts go through the whole training pipeline, and each model is
scored against the simulator's known potential outcomes on one independent simulated test
set, beside published peers fitted on the same cohorts. One module per step:

- `study.run`: the replications (simulate, train, predict on the test set, collect the
  model's and its candidates' answers) and their seeds;
- `study.truth`: the truth on the pipeline's outcome scale and every score against it
  (PEHE, regret, coverage, ...), with their definitions;
- `study.peers`: the peer methods (EconML, CausalML) behind one small `Peer` interface;
- `study.summary`: medians per method, ours against the best peer, interval diagnosis,
  the tables;
- `study.figures`: the plots;
- `study.outputs` and `study.tracking`: the files under --out and the MLflow run.

`personalize study` (personalize.cli) and benchmarks/recovery.py drive it.
"""

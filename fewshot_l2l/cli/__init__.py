"""Command-line front ends, one module per command, each a ``main(argv=None)`` that parses and calls the library.

Installed as console scripts (``pyproject.toml``, ``[project.scripts]``), also runnable as modules:

* ``fewshot-train`` = ``python -m fewshot_l2l.cli.train``: meta-train the Meta-LSTM (or, ``--method``, a
  baseline: ``fewshot_l2l.cli.baseline``) on few-shot episodes;
* ``fewshot-evaluate`` = ``python -m fewshot_l2l.cli.evaluate``: accuracy ± 95% CI of a checkpoint;
* ``fewshot-prepare-data`` = ``python -m fewshot_l2l.cli.prepare_data``: build an Omniglot / miniImageNet HDF5 file;
* ``fewshot-train-optimizer`` = ``python -m fewshot_l2l.cli.train_optimizer``: meta-train a learned optimizer;
* ``fewshot-evaluate-optimizer`` = ``python -m fewshot_l2l.cli.evaluate_optimizer``: compare it with tuned baselines;
* ``fewshot-plot-gates`` = ``python -m fewshot_l2l.cli.plot_gates``: draw the learned gates of a checkpoint;
* ``fewshot-compare`` = ``python -m fewshot_l2l.cli.compare``: every method on the same budget and test episodes.

``scripts/*.py`` in a clone call the same functions. Process-wide settings (the
glibc allocator tuning, seeding the global generators) are made here, in the
front ends, never as a side effect of the library functions they call.
"""

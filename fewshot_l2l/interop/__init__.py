"""learn2learn interoperability, one module per concept; the core package never imports learn2learn.

* :mod:`fewshot_l2l.interop.learn2learn` - :class:`~fewshot_l2l.interop.learn2learn.MetaLSTMAlgorithm`, the Meta-LSTM
  with the interface of ``learn2learn.algorithms.MAML`` (``clone()``, ``adapt(loss)``); plain PyTorch, it
  needs no learn2learn.
* :mod:`fewshot_l2l.interop.l2l_data` - this project's splits as learn2learn ``MetaDataset`` sources.
* :mod:`fewshot_l2l.interop.l2l_episodes` - a learn2learn ``TaskDataset`` as this project's episode source.

The two data modules import learn2learn when called (:func:`fewshot_l2l.extras.require`, naming the set-up
command when it is missing). docs/learn2learn.md has examples.
"""

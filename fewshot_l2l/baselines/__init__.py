"""Baselines on the Meta-LSTM's own episodes: MAML, first-order MAML, Meta-SGD, Prototypical Networks, fine-tuning.

Every method uses the same 4-block CNN (:class:`fewshot_l2l.learner.ConvLearner`, wrapped as an ``nn.Module`` by
:class:`network.ConvNet`), the same :class:`fewshot_l2l.data.episodes.EpisodeSampler`, seeds and run folder
(:class:`fewshot_l2l.runs.RunFolder`), so that a comparison differs only in the method. The hyper-parameters of
each method are its paper's for Omniglot (:data:`config.PAPER_SETTINGS`, cited there). ``maml``, ``fomaml`` and
``metasgd`` run through ``learn2learn.algorithms``, imported only when one of them is used.

Modules: :mod:`.config` (settings), :mod:`.network` (the CNN as a module), :mod:`.maml` (the learn2learn
methods), :mod:`.protonet`, :mod:`.finetune`, :mod:`.training` (training, checkpoints, evaluation).
"""

METHODS = ("meta-lstm", "maml", "fomaml", "metasgd", "protonet", "finetune")
BASELINES = METHODS[1:]

"""Running an experiment, whatever it trains: the run folder (:mod:`.folder`: checkpoints, metrics, resume), the one
training loop (:mod:`.loop`: signals, clock, non-finite guard, validation, progress), the operating system's part
(:mod:`.process`: the folder's lock, stop signals) and data-parallel training under ``torchrun``
(:mod:`.distributed`)."""

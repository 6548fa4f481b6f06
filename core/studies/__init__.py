"""Study measures of a tuned model over story features: readouts, cross-subject transfer and word-level probes.

Modules
-------
readouts  bottleneck readouts trained on fixed features, started from a ridge fit
transfer  other subjects' readouts on the tuned and the pretrained model's features
probes    word-level probes (acoustic, phonetic, semantic) of window features by layer
"""

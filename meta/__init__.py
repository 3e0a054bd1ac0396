"""Meta-training: learn a tuner (the PertNN bank) for a base model by learning to learn.

* :mod:`meta.metagrad` -- the meta-gradient of one meta step (closed form for K = 1, ``higher`` for any K).
* :mod:`meta.train`    -- the loop: first-order trajectory with restarts, task sampling, checkpoints, artifact.
"""

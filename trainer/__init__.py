"""The data plane: the trainer that pods and ``quanttrain train`` run.

Importing this package must stay cheap and free of the training libraries,
because the operator imports :mod:`quanttrain.trainer.config` for the job
models.  Heavy imports (pandas, torch, xgboost, scikit-learn) live inside the
modules that need them.
"""

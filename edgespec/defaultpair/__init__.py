"""The built-in ("default") model pair: configuration, data, model helpers.

`edgespec train-default` (:mod:`edgespec.train_default`) trains it and
`edgespec eval-default` (:mod:`edgespec.eval_default`) measures it; the trained folders live
in ``edgespec/default_models/{target,draft}``.
"""

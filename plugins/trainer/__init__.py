"""Built-in plugin ``trainer``: ``qlora-hub train``, ``eval``, ``merge``, ``data synth``,
``bench train``, and the Python API (:func:`plugins.trainer.train.train_adapter`,
:func:`plugins.trainer.evaluate.exact_match`). torch and transformers load inside commands."""

from hub import hookimpl


@hookimpl
def register_commands(cli):
    """Add the training, evaluation, merge, synthetic-data and benchmark commands."""
    from plugins.trainer.commands import add_commands

    add_commands(cli)

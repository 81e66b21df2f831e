"""Native framework integrations (docs/integrations.md): each a logger or callback that a framework
calls, writing to a runstream run.

* ``runstream.integration.lightning.RunstreamLogger``: a Lightning logger (``lightning.pytorch``);
  ``runstream.integration.pytorch_lightning.RunstreamLogger`` is the same for ``pytorch_lightning``.
* ``runstream.integration.huggingface.RunstreamCallback``: a Hugging Face ``TrainerCallback``;
  importing the module also registers it as ``TrainingArguments(report_to="runstream")``.
* ``runstream.integration.keras.RunstreamMetricsLogger`` and ``RunstreamModelCheckpoint``: Keras 3
  callbacks.

Each module imports its framework when it is itself imported; ``import runstream`` imports none of
them, and none of the frameworks is a dependency of runstream.
"""

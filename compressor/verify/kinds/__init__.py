"""The task kinds, one module per kind (or family of kinds) holding its class and its evaluation, as
lm-evaluation-harness keeps a task; ``base`` holds what they share (entry schema, ``TaskKind``, registry).

Importing any of them imports this package first, which registers the built-in kinds in the order
below: the order profiles and their errors list the kinds, whatever module a caller imports first.
"""
# the order of these imports is the registration order
# isort: off
from compressor.verify.kinds import perplexity  # noqa: F401
from compressor.verify.kinds import classification  # noqa: F401
from compressor.verify.kinds import multiple_choice  # noqa: F401
from compressor.verify.kinds import generation  # noqa: F401
# isort: on

"""Argument types that the CLI validates while parsing (before anything is built).

They are plain ``float`` subclasses for Python callers; the regulariser constructors check
their arguments again, so ``QSD(rate=1.5)`` raises ``ValueError`` outside the CLI too.
"""

from jsonargparse.typing import NonNegativeFloat, PositiveFloat, restricted_number_type

Rate = restricted_number_type("Rate", float, [(">=", 0), ("<", 1)], join="and", docstring="a rate in [0, 1)")
Precision = PositiveFloat  # gamma > 0
NonNegative = NonNegativeFloat

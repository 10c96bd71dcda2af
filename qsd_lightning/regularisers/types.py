"""Argument types that the CLI validates while parsing (before anything is built).

They are plain ``float`` / ``int`` subclasses for Python callers; the regulariser constructors
check their arguments again, so ``QSD(rate=1.5)`` raises ``ValueError`` outside the CLI too.

Values parsed as one of these types stay instances of it in the parsed configuration. When the
class of a regulariser changes on the command line (``--model.regulariser my.Class``) the
values already given (``rate: 0.3`` from the config) carry over to the new class, typed there
as a plain ``float``, and PyYAML's safe dumper, which knows ``float`` but not its subclasses,
refused to save that configuration (``RepresenterError: cannot represent an object``). The
safe dumper therefore writes every ``float`` / ``int`` subclass as the number it is.
"""

import yaml
from jsonargparse.typing import NonNegativeFloat, PositiveFloat, restricted_number_type

Rate = restricted_number_type("Rate", float, [(">=", 0), ("<", 1)], join="and", docstring="a rate in [0, 1)")
Precision = PositiveFloat  # gamma > 0
NonNegative = NonNegativeFloat
#: an input dim of a regulariser (``unit_dims``, ``locked_dims``): anything but 0, the batch dim
Dim = restricted_number_type("Dim", int, [("!=", 0)], docstring="a non-batch dim (an int other than 0)")


def _represent_number(dumper: yaml.SafeDumper, data):
    base = float if isinstance(data, float) else int
    represent = yaml.SafeDumper.yaml_representers[base]
    return represent(dumper, base(data))


for _base in (float, int):  # bool has its own (exact) representer, so stays true/false
    if _base not in yaml.SafeDumper.yaml_multi_representers:
        yaml.SafeDumper.add_multi_representer(_base, _represent_number)

"""qsd-lightning: Quantal Synaptic Dilution and the dropout family for PyTorch Lightning."""

import warnings

# Tasks keep their regulariser in the hyper-parameters on purpose (resuming rebuilds it);
# Lightning's advice to ignore nn.Module arguments does not apply to these templates.
warnings.filterwarnings("ignore", message=r"Attribute '\w*regulariser' is an instance of `nn.Module`")

__version__ = "0.1.0"

"""Short, stable layer names for logged keys."""


def layer_name(module_name: str) -> str:
    """``net.hidden.1.reg`` -> ``hidden.1.reg`` (the task's network attribute is dropped)."""
    return module_name[4:] if module_name.startswith("net.") else module_name

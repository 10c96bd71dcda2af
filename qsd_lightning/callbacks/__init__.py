"""Callbacks: regulariser schedules and analysis logging."""

from .switch import RegulariserSwitch

__all__ = ["RegulariserSwitch"]

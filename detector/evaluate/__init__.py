"""Offline evaluation of detector output: NAB scoring."""

"""Shared by every stage: names of files and columns, the one atomic writer, the device rule, errors, progress,
input validation.
"""

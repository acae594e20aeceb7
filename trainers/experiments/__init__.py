"""The study's experiments as flagfiles (`<name>.flags`), package data of `trainers`.

A package (not a bare folder) so that setuptools installs it with its flagfiles
and `tools.reproduce` finds them in a plain, non-editable install too.
"""

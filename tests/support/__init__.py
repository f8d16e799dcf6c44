"""Helpers shared by the tests (importable as ``support`` via ``[tool.pytest.ini_options] pythonpath``).

Test files import from here, never from each other: ``paths`` (the repository root), ``structures`` (real COD
crystals, their graphs, labelled batches), ``heads`` (head configurations on those batches), ``training`` (tiny
run configurations on the shipped Materials Project sample), ``memory`` (resident memory of this process).
"""

"""tlgnn.io: read crystal structures from files, folders, globs or memory into validated pymatgen Structures.

Public API (see docs/architecture.md): ``read_structures``, ``ReadResult``, ``StructureRecord``,
``StructureReadError``, ``parse_structure_text``, ``check_structure``.
"""

from tlgnn.io.errors import DisorderedStructureDropped, StructureReadError
from tlgnn.io.formats import atoms_to_structure, parse_structure_text
from tlgnn.io.reader import ReadResult, StructureRecord, read_structures
from tlgnn.io.validate import check_structure, order_by_majority

__all__ = [
    "DisorderedStructureDropped",
    "ReadResult",
    "StructureRecord",
    "StructureReadError",
    "atoms_to_structure",
    "check_structure",
    "order_by_majority",
    "parse_structure_text",
    "read_structures",
]

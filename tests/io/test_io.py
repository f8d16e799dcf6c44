"""tlgnn.io on the shipped sample files in data/structures (real files, real behaviour)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from pymatgen.core import Lattice, Structure

from support.paths import ROOT
from tlgnn.io import (
    StructureReadError,
    check_structure,
    parse_structure_text,
    read_structures,
)

DATA = ROOT / "data" / "structures"
COD = DATA / "cif" / "cgcnn_cod_sample"
PMG = DATA / "cif" / "pymatgen_tests"
SLABS = DATA / "cif" / "tinnet_a3b"
SPG = DATA / "poscar" / "spglib_examples"
SPG_TESTS = DATA / "poscar" / "spglib_test_poscars"
EXTXYZ = DATA / "extxyz" / "tinnet_oh_first6.extxyz.gz"

COD_FACTS = {  # id -> (reduced formula, sites in the conventional cell)
    "1000041": ("NaCl", 8), "1000050": ("KCl", 2), "1101051": ("ZnS", 4), "1507756": ("BaTiO3", 5),
    "7206075": ("TiO2", 12), "9000046": ("C", 8), "9009743": ("CsCl", 2), "9011050": ("Ge", 8),
    "9011998": ("Si", 8), "9012304": ("C", 8),
}


# ------------------------------------------------------------------------------------------------------------ CIF
def test_cod_folder_reads_every_cif_with_known_composition_and_skips_csv():
    result = read_structures(COD)
    assert result.ids == sorted(COD_FACTS)
    for rec in result:
        formula, n_sites = COD_FACTS[rec.id]
        assert rec.structure.composition.reduced_formula == formula
        assert len(rec.structure) == n_sites
        assert rec.path == str(COD / f"{rec.id}.cif")
    assert result.failures == []
    assert result.skipped == [(str(COD / "id_prop.csv"), "not a structure file: unrecognised name/extension '.csv'")]


def test_pymatgen_cifs_symmetrised_and_p1():
    result = read_structures([PMG / "MgNiF6.cif", PMG / "H6PbCI3N_mp-977013_symmetrized.cif", PMG / "btet_1915.cif"])
    got = {r.id: (r.structure.composition.reduced_formula, len(r.structure)) for r in result}
    assert got == {"MgNiF6": ("MgNiF6", 8), "H6PbCI3N_mp-977013_symmetrized": ("H6PbCI3N", 12), "btet_1915": ("Fe2B", 6)}


def test_broken_cif_error_names_file_and_reason():
    path = PMG / "bad_superflat_inf_loop.cif"
    with pytest.raises(StructureReadError) as info:
        read_structures(path)
    err = info.value
    assert err.path == str(path) and err.block is None
    assert "zero/degenerate cell volume" in err.reason
    assert str(err) == f"{path}: {err.reason}"
    assert "Invalid CIF file" not in str(err)


def test_cif_without_atoms_is_translated():
    text = "data_x\n_cell_length_a 4\n_cell_length_b 4\n_cell_length_c 4\n_cell_angle_alpha 90\n" \
           "_cell_angle_beta 90\n_cell_angle_gamma 90\n"
    with pytest.raises(StructureReadError, match="no structure in CIF") as info:
        parse_structure_text(text, "cif", name="row 3")
    assert info.value.path == "row 3"


def test_multiblock_cif_ids_and_gzip(tmp_path):
    text = (COD / "1000041.cif").read_text() + "\n" + (COD / "9011998.cif").read_text().replace(
        "data_9011998", "data_silicon")
    with gzip.open(tmp_path / "two.cif.gz", "wt") as fh:
        fh.write(text)
    single = tmp_path / "single.cif.gz"
    with gzip.open(single, "wt") as fh:
        fh.write((COD / "1000050.cif").read_text())
    result = read_structures(tmp_path)
    assert result.ids == ["single", "two/1000041", "two/silicon"]
    assert [r.structure.composition.reduced_formula for r in result] == ["KCl", "NaCl", "Si"]


@pytest.mark.parametrize("policy", ["error", "order", "drop"])
def test_disordered_policies(policy):
    path = PMG / "Cod_2100513_abridged.cif"
    if policy == "error":
        with pytest.raises(StructureReadError, match=r"disordered sites: 4 sites with partial occupancy; "
                                                     r"pass disordered='order'.*'drop'"):
            read_structures(path)
        return
    result = read_structures(path, disordered=policy)
    if policy == "order":
        (rec,) = result.records
        assert rec.structure.is_ordered and len(rec.structure) == 20
        # Al/Nb 0.941/0.059 antisite: the majority species wins on each site
        assert rec.structure.composition.as_dict() == {"Ca": 4.0, "Al": 2.0, "Nb": 2.0, "O": 12.0}
    else:
        assert result.records == [] and result.failures == []
        assert result.skipped == [(str(path), "dropped (disordered='drop'): 4 sites with partial occupancy")]
        assert "dropped" in result.report()


def test_order_merges_split_positions():
    # two half-occupied Li split positions 0.2 Å apart: ordering keeps one, not two overlapping atoms
    s = Structure(Lattice.cubic(5.0), [{"Li": 0.6}, {"Li": 0.4}, "Cl"], [[0, 0, 0], [0.04, 0, 0], [0.5, 0.5, 0.5]])
    ordered = check_structure(s, "split", disordered="order")
    assert ordered.composition.as_dict() == {"Li": 1.0, "Cl": 1.0}
    assert np.allclose(ordered[0].frac_coords, [0, 0, 0])


# -------------------------------------------------------------------------------------------------------- POSCAR
def test_vasp4_poscars_take_species_from_site_comments():
    result = read_structures([SPG / "cubic_POSCAR-195", SPG / "monoclinic_POSCAR-014", SPG / "triclinic_POSCAR-002",
                              SPG / "layer_POSCAR-78"])
    got = {r.id: r.structure.composition.as_dict() for r in result}
    assert got == {
        "cubic_POSCAR-195": {"Na": 4, "Co": 4, "N": 32, "O": 48},
        "monoclinic_POSCAR-014": {"Ge": 2, "Br": 4, "F": 20},
        "triclinic_POSCAR-002": {"V": 16, "O": 28},
        "layer_POSCAR-78": {"Mo": 1, "S": 2},
    }


def test_hexagonal_poscar_194_never_read_as_o4p4():
    path = SPG / "hexagonal_POSCAR-194"
    with pytest.raises(StructureReadError, match="no element symbols in POSCAR") as info:
        read_structures(path)
    assert info.value.path == str(path)
    with pytest.raises(StructureReadError, match="no element symbols in POSCAR"):
        parse_structure_text(path.read_text(), "poscar")
    # the pymatgen H/He fallback is refused too
    result = read_structures(SPG_TESTS, on_error="skip")
    bad = {Path(e.path).name for e in result.failures}
    assert {"hexagonal_POSCAR-186", "tetragonal_POSCAR-122-3", "distorted_POSCAR-11"} <= bad
    for rec in result:  # species are exactly the elements named in the per-site comments, never H/He/Li fallbacks
        labels = {line.split("#")[1].strip().rstrip("0123456789") for line in Path(rec.path).read_text().splitlines()
                  if "#" in line}
        assert {el.symbol for el in rec.structure.composition} == labels


def test_truncated_poscars_say_how_many_coordinate_lines_are_missing(tmp_path):
    vasp4 = (SPG / "cubic_POSCAR-195").read_text().splitlines()  # counts '4 4 32 48', labelled sites
    (tmp_path / "cut4.vasp").write_text("\n".join(vasp4[:-2]) + "\n")
    vasp5 = read_structures(SPG / "layer_POSCAR-78")[0].structure.to(fmt="poscar").splitlines()
    (tmp_path / "cut5.vasp").write_text("\n".join(vasp5[:-1]) + "\n")  # MoS2: '1 2' promised, 2 sites given
    reasons = {Path(e.path).name: e.reason for e in read_structures(tmp_path, on_error="skip").failures}
    assert reasons == {
        "cut4.vasp": "POSCAR counts line '4 4 32 48' promises 88 atoms but 86 coordinate lines follow "
                     "(truncated file?)",
        "cut5.vasp": "POSCAR counts line '1 2' promises 3 atoms but 2 coordinate lines follow (truncated file?)",
    }


def test_spglib_poscars_spread():
    result = read_structures(SPG_TESTS, on_error="skip")
    assert len(result) + len(result.failures) == 20
    assert all("no element symbols in POSCAR" in e.reason for e in result.failures)
    comp = {r.id: r.structure.composition.reduced_formula for r in result}
    assert comp["cubic_POSCAR-225"] == "K2SnCl6"  # site comments: 8 K, 4 Sn, 24 Cl (Fm-3m)
    assert len(result) >= 10


def test_title_line_of_element_symbols_is_a_species_line():
    text = "Na Cl\n1.0\n5.64 0 0\n0 5.64 0\n0 0 5.64\n1 1\nDirect\n0 0 0\n0.5 0.5 0.5\n"
    assert parse_structure_text(text, "poscar").composition.reduced_formula == "NaCl"
    with pytest.raises(StructureReadError, match="no element symbols"):
        parse_structure_text(text.replace("Na Cl", "rocksalt"), "poscar")


# ----------------------------------------------------------------------------------------------- extxyz / JSON
def test_extxyz_slab_frames_with_partial_pbc():
    result = read_structures(EXTXYZ)
    assert result.ids == [f"tinnet_oh_first6/{i}" for i in range(6)]  # info ids repeat (clean/OH): frame index
    assert [len(r.structure) for r in result] == [16, 18] * 3
    assert result[0].structure.lattice.c == pytest.approx(21.91928306008623)
    assert "O" in result[1].structure.composition and "H" in result[1].structure.composition


def test_extxyz_text_and_molecule_refused():
    text = gzip.open(EXTXYZ, "rt").read().split("\n")
    first = "\n".join(text[: int(text[0]) + 2]) + "\n"
    assert len(parse_structure_text(first, "extxyz")) == 16
    molecule = "3\nProperties=species:S:1:pos:R:3\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"
    with pytest.raises(StructureReadError, match="not periodic"):
        parse_structure_text(molecule, "extxyz", name="water")


def test_json_dict_list_and_gz(tmp_path):
    nacl = read_structures(COD / "1000041.cif")[0].structure
    si = read_structures(COD / "9011998.cif")[0].structure
    (tmp_path / "one.json").write_text(json.dumps(nacl.as_dict()))
    (tmp_path / "many.json").write_text(json.dumps([si.as_dict(), {"material_id": "mp-22862",
                                                                    "structure": nacl.as_dict()}]))
    with gzip.open(tmp_path / "zipped.json.gz", "wt") as fh:
        json.dump(si.as_dict(), fh)
    result = read_structures(tmp_path)
    assert result.ids == ["many/0", "many/mp-22862", "one", "zipped"]
    assert [r.structure.composition.reduced_formula for r in result] == ["Si", "NaCl", "NaCl", "Si"]
    assert parse_structure_text(json.dumps(nacl.as_dict()), "json") == nacl


# --------------------------------------------------------------------------------------------- in-memory input
def test_structures_and_atoms_in_memory():
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cu = Atoms("Cu", cell=np.eye(3) * 2.55, pbc=True)
    named = Atoms("Cu", cell=np.eye(3) * 2.55, pbc=True, info={"id": "copper"})
    result = read_structures([nacl, cu, named])
    assert result.ids == ["structure_0", "structure_1", "copper"]
    assert result[0].structure is nacl and result[0].path is None
    assert result[1].structure.composition.reduced_formula == "Cu"
    assert read_structures(nacl).ids == ["structure_0"]
    again = read_structures(read_structures([nacl, named]))  # a ReadResult (its records) passes through
    assert again.ids == ["structure_0", "copper"] and again[0].structure is nacl


def test_atoms_subclass_from_pymatgen_is_read():
    """pymatgen's AseAtomsAdaptor returns MSONAtoms, a subclass of ase.Atoms: read like Atoms."""
    from pymatgen.io.ase import AseAtomsAdaptor

    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    atoms = AseAtomsAdaptor.get_atoms(nacl)
    assert type(atoms).__name__ != "Atoms"
    result = read_structures([atoms])
    assert not result.failures
    assert result[0].structure.composition.reduced_formula == "NaCl"


def test_molecule_overlap_empty_errors():
    water = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    with pytest.raises(StructureReadError, match=r"not periodic: no 3D lattice \(cell rank 0") as info:
        read_structures(water)
    assert str(info.value).startswith("structure_0: ")
    overlap = Structure(Lattice.cubic(4.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.52, 0.5, 0.5]])
    with pytest.raises(StructureReadError, match=r"sites 1 \(Cl\) and 2 \(Cl\) are 0.080 Å apart"):
        check_structure(overlap, "dup")
    tiny = Structure(Lattice.cubic(0.4), ["Cu"], [[0, 0, 0]])
    with pytest.raises(StructureReadError, match="own periodic image"):
        check_structure(tiny, "tiny")
    with pytest.raises(StructureReadError, match="empty structure"):
        check_structure(Structure(Lattice.cubic(4.0), [], []), "nothing")
    flat = Structure(Lattice([[4, 0, 0], [0, 4, 0], [4, 4, 0]]), ["Cu"], [[0, 0, 0]])
    with pytest.raises(StructureReadError, match="degenerate cell"):
        check_structure(flat, "flat")
    result = read_structures([water, overlap, Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]])],
                             on_error="skip")
    assert result.ids == ["structure_2"] and [e.block for e in result.failures] == ["structure_0", "structure_1"]


# ------------------------------------------------------------------------------------------------ batch behaviour
def test_appledouble_junk_skipped_and_reported():
    result = read_structures(SLABS)
    assert result.ids == ["Ag3Al1", "Ir3Ag1", "Pd3Nb1"]
    assert all(len(r.structure) == 18 for r in result)
    assert sorted(Path(p).name for p, _ in result.skipped) == ["._Ag3Ag1.cif", "._Pd3Nb1.cif"]
    assert all("AppleDouble" in why for _, why in result.skipped)
    assert "._Pd3Nb1.cif" in result.report()
    with pytest.raises(StructureReadError, match="AppleDouble"):  # named explicitly: read, and refused
        read_structures(SLABS / "._Pd3Nb1.cif")


@pytest.fixture
def mixed_dir(tmp_path):
    for name in ("1000041.cif", "9011998.cif", "1101051.cif"):
        shutil.copy(COD / name, tmp_path / name)
    shutil.copy(SPG / "cubic_POSCAR-195", tmp_path / "cubic_POSCAR-195")
    shutil.copy(PMG / "bad_superflat_inf_loop.cif", tmp_path / "flat.cif")
    shutil.copy(SPG / "hexagonal_POSCAR-194", tmp_path / "hexagonal_POSCAR-194")
    (tmp_path / "garbage.cif").write_text("this is not a crystal\n")
    return tmp_path


def test_directory_with_three_bad_files(mixed_dir):
    result = read_structures(mixed_dir, on_error="skip")
    assert result.ids == ["1000041", "1101051", "9011998", "cubic_POSCAR-195"]
    assert sorted(Path(e.path).name for e in result.failures) == ["flat.cif", "garbage.cif", "hexagonal_POSCAR-194"]
    reasons = {Path(e.path).name: e.reason for e in result.failures}
    assert reasons["garbage.cif"] == "not a CIF file: no 'data_' block found"
    report = result.report()
    assert report.startswith("read 4 structures; 3 failed; 0 skipped")
    assert all(str(e) in report for e in result.failures)
    with pytest.raises(StructureReadError) as info:
        read_structures(mixed_dir)
    assert info.value.path == str(mixed_dir / "flat.cif")  # first failure in sorted order


def test_glob_list_and_missing(tmp_path):
    result = read_structures([str(COD / "90*.cif"), COD / "1000041.cif"])
    assert result.ids == ["9000046", "9009743", "9011050", "9011998", "9012304", "1000041"]
    result = read_structures([COD / "1000041.cif", tmp_path / "nope.cif"], on_error="skip")
    assert result.ids == ["1000041"] and "file not found" in result.failures[0].reason
    result = read_structures([COD / "1000041.cif", COD / "1000041.cif"], on_error="skip")
    assert len(result) == 1 and "duplicate id '1000041'" in result.failures[0].reason


def test_cif_cut_inside_its_atom_site_loop_is_refused_not_read_short(tmp_path):
    text = (COD / "1000041.cif").read_text()  # NaCl: one Na and one Cl site
    cut = text[: text.index("\n", text.index("Na1")) + 1]
    (tmp_path / "cut.cif").write_text(cut)
    (err,) = read_structures(tmp_path / "cut.cif", on_error="skip").failures
    assert err.path == str(tmp_path / "cut.cif")
    assert err.reason.startswith("atom sites lack Cl, which _chemical_formula_sum 'Cl Na' lists")
    # cut inside a loop header: pymatgen's tokenizer fails with a ZeroDivisionError; the reason says what it means
    (tmp_path / "cut2.cif").write_text(text[: text.index("loop_") + len("loop_\n_")])
    (err,) = read_structures(tmp_path / "cut2.cif", on_error="skip").failures
    assert err.reason.startswith("unreadable CIF: a loop_ has no column names or its rows do not fill its columns")
    # hydrogen listed without sites (X-ray structures) is accepted
    with_h = text.replace("'Cl Na'", "'Cl H2 Na'")
    assert with_h != text
    (tmp_path / "noh.cif").write_text(with_h)
    assert read_structures(tmp_path / "noh.cif")[0].structure.composition.reduced_formula == "NaCl"


def test_glob_ids_keep_the_folder_so_same_named_files_stay_apart(tmp_path):
    for sub, name in (("a", "cubic_POSCAR-195"), ("b", "layer_POSCAR-78"), ("c", "monoclinic_POSCAR-014")):
        (tmp_path / "runs" / sub).mkdir(parents=True)
        shutil.copy(SPG / name, tmp_path / "runs" / sub / "CONTCAR")
    result = read_structures(str(tmp_path / "runs" / "*" / "CONTCAR"), on_error="skip")
    assert result.ids == ["a/CONTCAR", "b/CONTCAR", "c/CONTCAR"] and not result.failures
    assert result.structures[0] == read_structures(SPG / "cubic_POSCAR-195")[0].structure
    # a flat glob keeps plain stems; the recursive folder listing gives the same ids as the glob
    assert read_structures(str(COD / "90*.cif")).ids[0] == "9000046"
    assert read_structures(tmp_path / "runs", recursive=True).ids == result.ids


def test_folder_without_recursive_names_the_sub_folders_it_did_not_read(tmp_path):
    (tmp_path / "inner").mkdir()
    (tmp_path / ".git").mkdir()
    shutil.copy(COD / "1000041.cif", tmp_path / "inner" / "1000041.cif")
    result = read_structures(tmp_path, on_error="skip")
    assert len(result) == 0 and not result.failures
    ((where, why),) = result.skipped  # the hidden folder is not reported
    assert where == str(tmp_path / "inner") and "recursive" in why
    assert read_structures(tmp_path, recursive=True).ids == ["inner/1000041"]


@pytest.mark.filterwarnings("ignore:Site labels are not unique")
def test_process_pool_matches_serial(tmp_path):
    sources = read_structures([COD, SLABS, SPG / "cubic_POSCAR-195"]).records
    for i in range(70):
        rec = sources[i % len(sources)]
        if i % 2:
            rec.structure.to(filename=str(tmp_path / f"s{i:03d}.cif"))
        else:
            rec.structure.to(filename=str(tmp_path / f"s{i:03d}.vasp"), fmt="poscar")
    (tmp_path / "s999.cif").write_text("data_broken\n")
    serial = read_structures(tmp_path, n_jobs=1, on_error="skip")
    pooled = read_structures(tmp_path, n_jobs=2, on_error="skip")
    assert len(serial) == 70 and serial.ids == pooled.ids
    assert [str(e) for e in serial.failures] == [str(e) for e in pooled.failures]
    for a, b in zip(serial, pooled):
        assert a.path == b.path and a.structure == b.structure


def test_ase_fallback_and_unknown_format(tmp_path):
    from ase.io import write

    write(tmp_path / "cu.xsf", Atoms("Cu4", scaled_positions=[[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]],
                                     cell=np.eye(3) * 3.61, pbc=True))
    (tmp_path / "notes.txt").write_text("band gaps measured on tuesday\n")
    result = read_structures([tmp_path / "cu.xsf", tmp_path / "notes.txt"], on_error="skip")
    assert result.ids == ["cu"] and result[0].structure.composition.as_dict() == {"Cu": 4.0}
    assert result[0].structure.lattice.a == pytest.approx(3.61)
    (err,) = result.failures
    assert err.path == str(tmp_path / "notes.txt") and err.reason.startswith("unknown format")
    assert read_structures(tmp_path).skipped == [(str(tmp_path / "notes.txt"),
                                                  "not a structure file: unrecognised name/extension '.txt'")]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-8-sig", "utf-32"])
def test_utf16_and_bom_cifs_read_like_the_utf8_original(tmp_path, encoding):
    """A CIF saved as UTF-16 (Windows 'Unicode') or with a UTF-8 byte-order mark used to be 'binary content'."""
    original = COD / "1507756.cif"
    copy = tmp_path / "1507756.cif"
    copy.write_bytes(original.read_text().encode(encoding))
    assert b"\x00" in copy.read_bytes() or encoding == "utf-8-sig"
    (record,) = read_structures(copy).records
    expected = read_structures(original).records[0].structure
    assert record.structure == expected and record.structure.composition.reduced_formula == "BaTiO3"


def test_binary_and_bad_utf16_files_name_the_problem(tmp_path):
    (tmp_path / "noise.cif").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "cut16.cif").write_bytes((COD / "1507756.cif").read_text().encode("utf-16")[:-1] + b"\x00\xd8")
    result = read_structures(tmp_path, on_error="skip")
    reasons = {Path(err.path).name: err.reason for err in result.failures}
    assert reasons["noise.cif"].startswith("not a structure file: binary content in a cif file")
    assert reasons["cut16.cif"].startswith("unreadable: the file starts like UTF-16 text but is not valid UTF-16")


CSCL = COD / "9009743.cif"  # Pm-3m CsCl: Cs at 0 0 0, Cl at 1/2 1/2 1/2, a = 4.115 Å


@pytest.mark.parametrize("old, new, reason", [
    ("Cl 0.50000 0.50000 0.50000", "Cl 0.00000 0.00000 0.00000",
     "overlapping atoms: atom sites lie exactly on top of each other once the symmetry operations are applied "
     "(their occupancies add up to 2)"),
    ("_cell_length_c                   4.1150", "_cell_length_c                   0.0",
     "zero/degenerate cell volume: the CIF's _cell_length_* and _cell_angle_* give no 3D cell"),
    ("_cell_angle_alpha                90\n_cell_angle_beta                 90",
     "_cell_angle_alpha                0\n_cell_angle_beta                 0",
     "zero/degenerate cell volume: the CIF's _cell_length_* and _cell_angle_* give no 3D cell"),
])
def test_cif_overlap_and_flat_cell_reasons_are_tlgnns_not_pymatgens(tmp_path, old, new, reason):
    """Used to read 'Occupancy 2.0 exceeded tolerance' and 'Singular matrix'."""
    text = CSCL.read_text()
    assert old in text
    bad = tmp_path / "cscl.cif"
    bad.write_text(text.replace(old, new))
    (err,) = read_structures(bad, on_error="skip").failures
    assert err.reason.startswith(reason) and "pymatgen" not in err.reason and "Singular" not in err.reason
    assert str(err).startswith(str(bad))

"""The view vocabulary: real-world spellings of view names map to the canonical views."""

from __future__ import annotations

import pytest

from fusc_lib.views import UNKNOWN, ViewVocabulary, load_vocabulary


@pytest.fixture(scope="module")
def vocabulary() -> ViewVocabulary:
    return load_vocabulary()


@pytest.mark.parametrize("text, view", [
    ("4CH", "4ch"), ("4 CH", "4ch"), ("FOUR CHAMBER", "4ch"), ("4-ch view", "4ch"),
    ("LVOT", "lvot"), ("RVOT", "rvot"), ("3VV", "3vv"), ("3VT", "3vv"), ("3 V T", "3vv"),
    ("TV", "brain"), ("TC", "brain"), ("TT", "brain"), ("Trans-cerebellar", "brain"),
    ("FEMUR", "femur"), ("FE MUR", "femur"), ("FL 3.2cm", "femur"), ("FEMLR", "femur"),
    ("ABDOMEN", "abdomen"), ("AC 21.3 cm", "abdomen"), ("KIDNEYS", "kidney"),
    ("SPINE SAG", "spine"), ("LIPS/NOSE", "lips_nose"), ("PROFILE", "profile"),
    ("ORBITS", "orbit"), ("DIAPHRAGM", "diaphragm"), ("CORD INSERTION", "cord_insertion"),
    ("FEET", "feet"), ("THORAX", "heart"), ("RV OUTFLOW", "rvot"), ("SCH", "lvot"),
    ("Cl", "cord_insertion"), ("4 CH 67Hz", "4ch"),
])
def test_real_world_spellings(vocabulary, text, view):
    assert vocabulary.match([(text, 0.9)]).view == view


@pytest.mark.parametrize("text", ["25Hz/15.6cm", "Voluson S10", "3 Trim./OB", "TVUS", "Cardiac/OB",
                                  "SRI II 2/CRI 3", "Gn -3", "65°/2.7", ""])
def test_machine_text_names_no_view(vocabulary, text):
    assert vocabulary.match([(text, 0.9)]).view == UNKNOWN


def test_typed_name_beats_caliper_label_and_confidence_is_scaled(vocabulary):
    match = vocabulary.match([("BPD 4.5cm", 0.95), ("FEMUR", 0.9)])
    assert match.view == "femur"
    assert vocabulary.match([("BPD 4.5cm", 1.0)]).confidence == pytest.approx(0.8)


def test_typed_view_beats_a_region_read_more_confidently(vocabulary):
    assert vocabulary.match([("THORAX", 0.99), ("4CHAMBER", 0.5)]).view == "4ch"


def test_every_view_has_a_super_class(vocabulary):
    assert len(vocabulary.views) == 15
    assert {vocabulary.super_class(v) for v in vocabulary.views} == {"head", "heart", "abdomen",
                                                                     "bone"}
    assert vocabulary.super_class("heart") == "heart" and vocabulary.super_class("x") == UNKNOWN


def test_user_vocabulary_file_extends_the_mapping(tmp_path):
    custom = tmp_path / "views.yaml"
    custom.write_text("super_classes: {head: [brain]}\n"
                      "views: {brain: {aliases: [CEREBRO, CABEZA]}}\n")
    vocabulary = ViewVocabulary.load(custom)
    assert vocabulary.match([("cabeza", 0.7)]).view == "brain"
    assert vocabulary.match([("FEMUR", 0.9)]).view == UNKNOWN

"""Output-name suggestions in the user's scheme, and no run over an existing run folder."""
from __future__ import annotations

from engine.run.naming import existing_run_names, parse_name, run_folder_problem, suggest_names


def test_number_for_new_images_letter_for_new_settings():
    names = suggest_names("city-v2", {"city-v1", "city-v2"})
    assert (names.new_images, names.new_settings) == ("city-v3", "city-v2b")


def test_letters_continue_after_the_last_one_used():
    existing = {"city-v1", "city-v2", "city-v2b"}
    assert suggest_names("city-v2b", existing).new_settings == "city-v2c"
    assert suggest_names("city-v2", existing).new_settings == "city-v2c"
    assert suggest_names("city-v2b", existing).new_images == "city-v3"


def test_the_next_number_is_above_every_run_of_the_series():
    existing = {"city-v1", "city-v4", "other-v9"}
    assert suggest_names("city-v1", existing).new_images == "city-v5"


def test_an_unused_name_is_its_own_suggestion():
    names = suggest_names("city-v3", {"city-v1", "city-v2"})
    assert names.new_images == "city-v3"
    assert names.new_settings == "city-v3"


def test_zero_padding_and_unnumbered_names():
    assert suggest_names("run_009", {"run_009"}).new_images == "run_010"
    assert suggest_names("run_009", {"run_009"}).new_settings == "run_009b"
    names = suggest_names("city", {"city"})
    assert (names.new_images, names.new_settings) == ("city-v2", "city-v1b")
    assert parse_name("city-v2b").format() == "city-v2b"


def test_suggestions_never_name_an_existing_run():
    existing = {"a-v1", "a-v1b", "a-v1c", "a-v2"}
    names = suggest_names("a-v1", existing)
    assert names.new_images not in existing and names.new_settings not in existing
    assert names.new_settings == "a-v1d"


def test_existing_run_folder_is_refused_with_a_suggestion(tmp_path):
    runs = tmp_path / "runs"
    (runs / "city-v2").mkdir(parents=True)
    (runs / "notes.txt").write_text("not a run")
    assert existing_run_names(runs) == {"city-v2"}
    assert existing_run_names(tmp_path / "missing") == set()
    problem = run_folder_problem("city-v2", runs)
    assert "already exists" in problem and "city-v3" in problem and "city-v2b" in problem
    assert run_folder_problem("city-v3", runs) is None

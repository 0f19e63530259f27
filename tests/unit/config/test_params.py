"""The iTop-syntax params-file reader (cronloop.config.params)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cronloop.config.params import (
    ParamsError,
    ParamValue,
    normalize_key,
    parse_params_text,
    read_params_file,
    split_file_list,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def as_dict(values: list[ParamValue]) -> dict[str, str]:
    """Last value wins, as the settings loader does."""
    return {v.key: v.value for v in values}


def test_inline_comment_is_cut_from_the_value(tmp_path: Path) -> None:
    f = write(tmp_path / "a.params", "size_min = 20 # Megabytes\n")
    assert read_params_file(f) == [ParamValue("size_min", "20", str(f), 1)]


def test_blank_and_comment_lines_are_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    f = write(tmp_path / "a.params", "# header\n\n   \n  # indented comment\nx = 1\n\ny=2\n")
    values = read_params_file(f)
    assert [(v.key, v.value, v.line) for v in values] == [("x", "1", 5), ("y", "2", 7)]
    assert values[0].origin == f"{f}:5"


def test_keys_and_values_are_trimmed_and_value_may_contain_equals(tmp_path: Path) -> None:
    f = write(tmp_path / "a.params", "\t key\t=\t a = b  \n")
    assert as_dict(read_params_file(f)) == {"key": "a = b"}


def test_empty_value_is_the_empty_string(tmp_path: Path) -> None:
    f = write(tmp_path / "a.params", "backup_dir =\nother = # nothing\n")
    assert as_dict(read_params_file(f)) == {"backup_dir": "", "other": ""}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('password = "a#b"  # note', "a#b"),
        ("password = 'a#b'", "a#b"),
        ('password = "  spaced  "', "  spaced  "),
        ('password = "it\'s"', "it's"),
        ("name = it's", "it's"),
        ('name = say "hi"', 'say "hi"'),
        ('empty = ""', ""),
    ],
)
def test_quotes(tmp_path: Path, line: str, expected: str) -> None:
    f = write(tmp_path / "a.params", line + "\n")
    assert read_params_file(f)[0].value == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('password = "abc', "unterminated"),
        ("password = 'abc\" # x", "unterminated"),
        ('password = "abc" def', "after the closing quote"),
    ],
)
def test_bad_quotes_are_errors_without_the_value(tmp_path: Path, line: str, reason: str) -> None:
    f = write(tmp_path / "a.params", "ok = 1\n" + line + "\n")
    with pytest.raises(ParamsError) as info:
        read_params_file(f)
    assert reason in str(info.value)
    assert info.value.file == str(f)
    assert info.value.line == 2
    assert "abc" not in str(info.value)


def test_keys_are_normalised(tmp_path: Path) -> None:
    f = write(tmp_path / "a.params", "Poll-Interval = 5\nBackup.Week-Days = Monday\nCRON_SLEEP=3\n")
    assert [v.key for v in read_params_file(f)] == [
        "poll_interval",
        "backup.week_days",
        "cron_sleep",
    ]
    assert normalize_key("  A-b.C-d ") == "a_b.c_d"


def test_a_line_without_equals_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    f = write(tmp_path / "a.params", "x = 1\n\npoll_interval 5\n")
    with pytest.raises(ParamsError) as info:
        read_params_file(f)
    assert info.value.file == str(f)
    assert info.value.line == 3
    assert str(info.value).startswith(f"{f}:3: ")
    assert isinstance(info.value, ValueError)


def test_equals_only_inside_a_comment_does_not_count(tmp_path: Path) -> None:
    f = write(tmp_path / "a.params", "database_password hunter2 # a=b\n")
    with pytest.raises(ParamsError) as info:
        read_params_file(f)
    assert info.value.line == 1
    assert "hunter2" not in str(info.value)  # the line is never echoed: it may be a password


@pytest.mark.parametrize(
    "line", ["= value", "two words = 1", "backup. = 1", ".time = 1", "a..b = 1"]
)
def test_invalid_keys_are_errors(tmp_path: Path, line: str) -> None:
    f = write(tmp_path / "a.params", line + "\n")
    with pytest.raises(ParamsError, match="invalid key") as info:
        read_params_file(f)
    assert info.value.line == 1


def test_an_invalid_key_is_not_echoed_it_may_be_a_password(tmp_path: Path) -> None:
    f = write(tmp_path / "a.params", "a = 1\ndatabase_password hunter2=x\nHunt3r!2 = 1\n")
    errors: list[ParamsError] = []
    read_params_file(f, errors=errors)
    assert [(e.file, e.line) for e in errors] == [(str(f), 2), (str(f), 3)]
    assert "an '=' missing" in str(errors[0])
    for error in errors:
        assert "unt3r" not in str(error) and "hunter2" not in str(error)


def test_errors_list_collects_every_bad_line_and_keeps_good_ones(tmp_path: Path) -> None:
    f = write(tmp_path / "a.params", "a = 1\nbad one\nb = 2\nbad two\n")
    errors: list[ParamsError] = []
    assert as_dict(read_params_file(f, errors=errors)) == {"a": "1", "b": "2"}
    assert [e.line for e in errors] == [2, 4]


def test_crlf_line_endings_and_utf8_bom(tmp_path: Path) -> None:
    f = tmp_path / "a.params"
    f.write_bytes(b"\xef\xbb\xbfname = caf\xc3\xa9\r\nx = 1\r\n")
    assert as_dict(read_params_file(f)) == {"name": "café", "x": "1"}


def test_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "nope.params"
    with pytest.raises(ParamsError, match="no such file") as info:
        read_params_file(f)
    assert info.value.file == str(f)
    assert info.value.line is None
    assert str(f) in str(info.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="directory") as info:
        read_params_file(tmp_path)
    assert info.value.file == str(tmp_path)


def test_bad_utf8_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "a.params"
    f.write_bytes(b"a = 1\nb = caf\xe9\n")
    with pytest.raises(ParamsError, match="UTF-8") as info:
        read_params_file(f)
    assert info.value.line == 2


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path / "a.params", "a = 1\n")

    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)  # also works when the tests run as root
    with pytest.raises(ParamsError, match="permission denied") as info:
        read_params_file(f)
    assert info.value.file == str(f)


def test_unreadable_file_goes_to_errors_list_when_given(tmp_path: Path) -> None:
    errors: list[ParamsError] = []
    assert read_params_file(tmp_path / "nope", errors=errors) == []
    assert [e.reason for e in errors] == ["no such file"]


def test_a_file_list_is_comma_separated_and_trimmed() -> None:
    assert split_file_list(" a.params, ,b.params ") == ["a.params", "b.params"]
    assert split_file_list(["x", " "]) == ["x"]
    assert split_file_list("") == [] and split_file_list(" , ") == []


def test_origin_for_values_not_from_a_file() -> None:
    assert ParamValue("a.b", "1", "env CRONLOOP_A__B", 0).origin == "env CRONLOOP_A__B"


def test_parse_params_text_labels_values_with_the_given_name() -> None:
    values, problems = parse_params_text("a = 1\noops\n", "<test>")
    assert values == [ParamValue("a", "1", "<test>", 1)]
    assert len(problems) == 1
    assert str(problems[0]).startswith("<test>:2: ")

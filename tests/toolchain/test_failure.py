"""The job error carries the lines that explain a failure, in esphome's real shapes."""

from __future__ import annotations

from meshd.toolchain.failure import MAX_ERROR_CHARS, FailureCollector


def _collect(lines: list[str]) -> FailureCollector:
    collector = FailureCollector()
    for line in lines:
        collector.feed(line)
    return collector


def test_failed_config_block_is_kept() -> None:
    collector = _collect(
        [
            "INFO ESPHome 2026.6.5",
            "INFO Reading configuration bad.yaml...",
            "Failed config",
            "",
            "logger: [source bad.yaml:5]",
            "  ",
            "  [levelx] is an invalid option for [logger]. Did you mean [level]?",
            "  levelx: DEBUG",
        ]
    )
    text = collector.summary("esphome compile failed (exit status 2)")
    assert text.startswith("esphome compile failed (exit status 2)\nFailed config")
    assert "[levelx] is an invalid option for [logger]" in text


def test_multiline_error_record_is_kept_and_info_ends_it() -> None:
    collector = _collect(
        [
            "ERROR Error while reading config: Invalid YAML syntax:",
            "",
            "while parsing a flow sequence",
            "INFO something unrelated",
            "plain output after",
        ]
    )
    text = collector.summary("h")
    assert "Invalid YAML syntax" in text and "while parsing a flow sequence" in text
    assert "unrelated" not in text and "plain output" not in text


def test_compiler_errors_are_picked_out() -> None:
    collector = _collect(
        [
            "Compiling .pioenvs/x/src/main.o",
            "src/main.cpp:3:1: error: 'foo' was not declared",
            "*** [.pioenvs/x/src/main.o] Error 1",
        ]
    )
    text = collector.summary("h")
    assert "'foo' was not declared" in text and "*** [" in text
    assert "Compiling" not in text


def test_tail_is_the_fallback_and_size_is_capped() -> None:
    collector = _collect([f"line {i}" for i in range(100)])
    text = collector.summary("h")
    assert "line 99" in text and "line 0\n" not in text
    big = _collect(["ERROR " + "x" * 10_000]).summary("h")
    assert len(big) == MAX_ERROR_CHARS

"""Benchmarks write their own section of docs/benchmarks.md and leave the others alone."""

from bench.docs import write_section


def test_write_section_replaces_only_its_own(tmp_path):
    doc = tmp_path / "benchmarks.md"
    write_section("engine", "Engine", "| a |\n|---|\n| 1 |", path=doc, argv=["--quick"])
    write_section("migration", "Migration", "| b |\n|---|\n| 2 |", path=doc, argv=[],
                  key="migration-g32")
    write_section("engine", "Engine", "| a |\n|---|\n| 3 |", path=doc, argv=["--write-docs"])
    text = doc.read_text()
    assert text.startswith("# Benchmarks")
    assert text.count("<!-- bench.engine: begin -->") == 1 and "| 1 |" not in text
    assert "| 3 |" in text and "| 2 |" in text
    assert "`python -m bench.engine --write-docs` on " in text and " cores, " in text
    assert text.index("bench.engine: begin") < text.index("bench.migration-g32: begin")


def test_a_new_file_starts_with_the_given_head(tmp_path):
    doc = tmp_path / "production.md"
    head = "# Production fit: measured\n"
    write_section("production", "Busy", "| c |\n|---|\n| 4 |", path=doc, argv=["--part", "busy"],
                  key="production-busy", head=head)
    write_section("production", "Start", "| d |\n|---|\n| 5 |", path=doc, argv=["--part", "start"],
                  key="production-start", head=head)
    write_section("production", "Busy", "| c |\n|---|\n| 6 |", path=doc, argv=["--part", "busy"],
                  key="production-busy", head=head)
    text = doc.read_text()
    assert text.startswith(head) and "| 4 |" not in text and "| 5 |" in text
    assert text.index("| 6 |") < text.index("| 5 |")  # replaced in place

"""Shared fixtures: the lab (tests/lab_fixtures.py); the fault matrix's summary table."""

pytest_plugins = ["lab_fixtures"]


def pytest_terminal_summary(terminalreporter):
    from fault_summary import table

    lines = table()
    if lines:
        terminalreporter.section("fault matrix")
        for line in lines:
            terminalreporter.write_line(line)

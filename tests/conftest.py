"""Shared by the three tiers (unit/: no root; lab/: namespaces and real daemons, root; vm/: QEMU
guests): the lab's fixtures (the plugin vpnd_testing.lab_fixtures, from lab/); the fault
matrix's summary table."""

pytest_plugins = ["vpnd_testing.lab_fixtures"]


def pytest_terminal_summary(terminalreporter):
    from vpnd_testing.fault_summary import table

    lines = table()
    if lines:
        terminalreporter.section("fault matrix")
        for line in lines:
            terminalreporter.write_line(line)
